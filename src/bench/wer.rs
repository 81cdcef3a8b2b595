//! Word error rate against a `manifest.jsonl`, scored like `benches/wer.py`.

use std::collections::HashMap;
use std::path::Path;

/// Text normalised for scoring, as `benches/wer.py`'s `normalize` does it:
///
/// 1. lowercase;
/// 2. typographic apostrophes (U+2018, U+2019, U+02BC, U+FF07) become `'`;
/// 3. hyphens, dashes (U+2010–U+2015, U+2212) and slashes become spaces;
/// 4. an apostrophe is kept only between two word characters (`don't`);
/// 5. every other punctuation mark or symbol is deleted without a space
///    (`Mr.` → `mr`, `1,000` → `1000`);
/// 6. whitespace is collapsed.
///
/// Two differences, immaterial for English transcripts: Unicode NFKC is not
/// applied (the standard library has no tables for it) and lowercasing is
/// `to_lowercase`, not Python's `casefold`; non-ASCII characters that are
/// neither letters, digits nor combining marks count as punctuation.
pub fn normalize(text: &str) -> String {
    let chars: Vec<char> = text
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{02bc}' | '\u{ff07}' => '\'',
            '-' | '\u{2010}'..='\u{2015}' | '\u{2212}' | '/' | '\\' => ' ',
            c => c,
        })
        .collect();
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut kept = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == '\'' {
            let inner = i > 0 && word(chars[i - 1]) && chars.get(i + 1).is_some_and(|&n| word(n));
            if inner {
                kept.push('\'');
            }
        } else if c.is_whitespace() {
            kept.push(' ');
        } else if c.is_alphanumeric() || ('\u{0300}'..='\u{036f}').contains(&c) {
            kept.push(c);
        }
    }
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The normalised words of `text`.
pub fn words(text: &str) -> Vec<String> {
    normalize(text)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Word-level Levenshtein distance (substitutions + deletions + insertions).
pub fn edit_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            current[j + 1] = (previous[j + 1] + 1)
                .min(current[j] + 1)
                .min(previous[j] + usize::from(r != h));
        }
        previous = current;
    }
    previous[hypothesis.len()]
}

/// Corpus-level counts: total edits over total reference words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub edits: usize,
    pub reference_words: usize,
    /// Reference utterances without a transcript in the output (scored as empty).
    pub missing: usize,
}

impl ErrorCounts {
    /// WER in percent.
    pub fn percent(&self) -> f64 {
        if self.reference_words == 0 {
            0.0
        } else {
            100.0 * self.edits as f64 / self.reference_words as f64
        }
    }

    /// Adds one utterance; `None` means the output has no transcript for it.
    pub fn add(&mut self, reference: &str, hypothesis: Option<&str>) {
        self.missing += usize::from(hypothesis.is_none());
        let reference = words(reference);
        let hypothesis = words(hypothesis.unwrap_or_default());
        self.edits += edit_distance(&reference, &hypothesis);
        self.reference_words += reference.len();
    }
}

/// The transcripts `mmt run` wrote under `out`, by job id: the `text/plain`
/// attachment of each FHIR `DocumentReference` (no `data` = empty transcript).
pub fn transcripts(out: &Path) -> HashMap<String, String> {
    let path = out.join("fhir/DocumentReference.ndjson");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut found = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let job = doc["identifier"]
            .as_array()
            .and_then(|ids| {
                ids.iter()
                    .find(|id| id["system"] == "urn:mmt:job")
                    .and_then(|id| id["value"].as_str())
            })
            .or_else(|| doc["id"].as_str());
        let Some(job) = job else { continue };
        let data = doc["content"][0]["attachment"]["data"]
            .as_str()
            .unwrap_or_default();
        let transcript = base64_decode(data)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        found.insert(job.to_owned(), transcript);
    }
    found
}

/// Standard base64 (RFC 4648, `+/`, optional `=` padding); `None` if invalid.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let body: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body = body
        .strip_suffix(b"==")
        .or_else(|| body.strip_suffix(b"="))
        .unwrap_or(&body);
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    for chunk in body.chunks(4) {
        let mut bits = 0u32;
        for &c in chunk {
            bits = bits << 6 | sextet(c)?;
        }
        bits <<= 6 * (4 - chunk.len() as u32);
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(text: &str) -> Vec<String> {
        words(text)
    }

    #[test]
    fn normalises_like_wer_py() {
        assert_eq!(
            normalize("Mr. Smith, 1,000 mg; i.e. 8.9%!"),
            "mr smith 1000 mg ie 89"
        );
        assert_eq!(
            normalize("forty-two and/or x\u{2014}y"),
            "forty two and or x y"
        );
        assert_eq!(
            normalize("The patient\u{2019}s ‘quoted’ 'tis patients' don't"),
            "the patient's quoted tis patients don't"
        );
        assert_eq!(normalize("  A  GOLDEN\tfortune\n"), "a golden fortune");
        assert_eq!(normalize("“Hello” — world…"), "hello world");
        assert!(w("").is_empty());
    }

    #[test]
    fn edit_distance_counts_substitutions_deletions_insertions() {
        assert_eq!(edit_distance(&w("a b c"), &w("a b c")), 0);
        assert_eq!(edit_distance(&w("a b c"), &w("a x c")), 1);
        assert_eq!(edit_distance(&w("a b c"), &w("a c")), 1);
        assert_eq!(edit_distance(&w("a b c"), &w("a b c d")), 1);
        assert_eq!(edit_distance(&w("a b c"), &w("")), 3);
        assert_eq!(edit_distance(&w(""), &w("a b")), 2);
        assert_eq!(edit_distance(&w("kitten sat down"), &w("sitting sat")), 2);
    }

    #[test]
    fn corpus_wer_is_total_edits_over_total_words() {
        let mut counts = ErrorCounts::default();
        counts.add(
            "Ask not what your country can do.",
            Some("ask not what you country can do"),
        );
        counts.add("A golden fortune", None);
        assert_eq!(counts.edits, 1 + 3);
        assert_eq!(counts.reference_words, 7 + 3);
        assert_eq!(counts.missing, 1);
        assert!((counts.percent() - 40.0).abs() < 1e-9);
        assert_eq!(ErrorCounts::default().percent(), 0.0);
    }

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(
            base64_decode("VGFrZSBhbGwgb2Yg\neW91cg==").unwrap(),
            b"Take all of your"
        );
        assert!(base64_decode("Zm9v!").is_none());
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn reads_transcripts_from_fhir_documents() {
        let dir = std::env::temp_dir().join(format!("mmt-bench-wer-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fhir")).unwrap();
        let docs = [
            r#"{"id":"doc1","identifier":[{"system":"urn:mmt:job","value":"job1"}],"content":[{"attachment":{"data":"Zm9vIGJhcg=="}}]}"#,
            r#"{"id":"job2","content":[{"attachment":{"contentType":"text/plain"}}]}"#,
        ];
        std::fs::write(dir.join("fhir/DocumentReference.ndjson"), docs.join("\n")).unwrap();
        let found = transcripts(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found["job1"], "foo bar");
        assert_eq!(found["job2"], "");
    }
}

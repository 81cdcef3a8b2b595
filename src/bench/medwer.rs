//! WER and medical-term WER under the `medwer` package's protocol (Whisper's
//! English normaliser with numbers folded, medical terms scored phrase by
//! phrase), computed by `benches/medwer_score.py` in the dev virtualenv: the
//! package is Python, and its normaliser and term list are what other
//! benchmarks report, so the bench runs it rather than a copy of it.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the script prints: counts summed over the corpus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct MedwerCounts {
    pub edits: u64,
    pub reference_words: u64,
    pub medical_edits: u64,
    pub medical_reference_words: u64,
}

impl MedwerCounts {
    pub fn percent(&self) -> Option<f64> {
        percent(self.edits, self.reference_words)
    }

    pub fn medical_percent(&self) -> Option<f64> {
        percent(self.medical_edits, self.medical_reference_words)
    }
}

fn percent(edits: u64, words: u64) -> Option<f64> {
    (words > 0).then(|| 100.0 * edits as f64 / words as f64)
}

/// The virtualenv's Python and the scoring script, once checked to import `medwer`.
#[derive(Debug, Clone)]
pub struct MedwerScorer {
    python: PathBuf,
    script: PathBuf,
}

#[derive(Serialize)]
struct Request<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl MedwerScorer {
    /// The scorer under `root` (the checkout), or why there is none.
    pub fn find(root: &Path) -> Result<Self, String> {
        let scorer = Self {
            python: root.join(".venv/bin/python"),
            script: root.join("benches/medwer_score.py"),
        };
        if !scorer.python.is_file() || !scorer.script.is_file() {
            return Err(format!(
                "{} or {} is missing (make setup-dev)",
                scorer.python.display(),
                scorer.script.display()
            ));
        }
        let checked = Command::new(&scorer.python)
            .arg(&scorer.script)
            .arg("--check")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|err| format!("cannot run {}: {err}", scorer.python.display()))?;
        if !checked.success() {
            return Err("the medwer package is not installed (make setup-dev)".to_owned());
        }
        Ok(scorer)
    }

    /// Scores `(reference, hypothesis)` pairs.
    pub fn score(&self, pairs: Vec<(&str, &str)>) -> Result<MedwerCounts, String> {
        let request = serde_json::to_vec(&Request { pairs }).map_err(|err| err.to_string())?;
        let mut child = Command::new(&self.python)
            .arg(&self.script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot run the medwer scorer: {err}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&request)
                .map_err(|err| format!("writing to the medwer scorer: {err}"))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|err| format!("waiting for the medwer scorer: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "the medwer scorer failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|err| format!("cannot read the medwer scorer's answer: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_percentages_of_reference_words() {
        let counts = MedwerCounts {
            edits: 3,
            reference_words: 12,
            medical_edits: 1,
            medical_reference_words: 0,
        };
        assert_eq!(counts.percent(), Some(25.0));
        assert_eq!(counts.medical_percent(), None);
    }

    /// Through the real script, where the dev virtualenv has medwer (the
    /// test suite's set-up, `make setup-dev`, installs it).
    #[test]
    fn scores_through_the_medwer_package() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let scorer = match MedwerScorer::find(root) {
            Ok(scorer) => scorer,
            Err(why) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: {why}");
                return;
            }
            Err(why) => panic!("{why}"),
        };
        let counts = scorer
            .score(vec![
                (
                    "give metoprolol twenty five milligrams twice daily",
                    "give metro pole 25 milligrams twice daily",
                ),
                ("", "anything"),
            ])
            .expect("scored");
        // Numbers fold (twenty five = 25); "metro pole" for "metoprolol" is
        // one substitution and one insertion, and the one medical term missed.
        assert_eq!(
            counts,
            MedwerCounts {
                edits: 2,
                reference_words: 6,
                medical_edits: 1,
                medical_reference_words: 1,
            }
        );
    }
}

//! The transcript of one audio input, and its renderings (text, JSON, SRT, WebVTT).

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One stretch of speech with its timing and the model's confidence in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Position of the segment in the transcript, from 0.
    pub id: usize,
    /// Start time in seconds from the beginning of the audio.
    pub start: f64,
    /// End time in seconds from the beginning of the audio.
    pub end: f64,
    /// The recognised text, with its leading space trimmed.
    pub text: String,
    /// Mean log-probability per token of the window this segment was decoded in.
    pub avg_logprob: f32,
    /// Probability that the window holds no speech at all.
    pub no_speech_prob: f32,
    /// Sampling temperature the window was finally decoded at (0 = greedy/beam).
    pub temperature: f32,
    /// exp(avg_logprob): a 0..1 confidence that is easy to threshold.
    pub confidence: f32,
}

/// Everything recognised in one audio input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// The full text: every segment's text joined by single spaces.
    pub text: String,
    /// Segments in time order.
    pub segments: Vec<Segment>,
    /// Duration of the decoded audio in seconds.
    pub duration_seconds: f64,
    /// Language of the transcript (ISO 639-1).
    pub language: String,
}

/// The renderings a transcript can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptFormat {
    Text,
    Json,
    Srt,
    Vtt,
}

impl std::str::FromStr for TranscriptFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "txt" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "srt" => Ok(Self::Srt),
            "vtt" | "webvtt" => Ok(Self::Vtt),
            other => Err(format!(
                "unknown transcript format {other:?} (expected text, json, srt or vtt)"
            )),
        }
    }
}

impl Transcript {
    /// Builds a transcript from segments, deriving the full text.
    pub fn from_segments(segments: Vec<Segment>, duration_seconds: f64, language: &str) -> Self {
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            text,
            segments,
            duration_seconds,
            language: language.to_owned(),
        }
    }

    /// Renders the transcript in `format`.
    pub fn render(&self, format: TranscriptFormat) -> String {
        match format {
            TranscriptFormat::Text => format!("{}\n", self.text),
            TranscriptFormat::Json => {
                // Serialising plain data with string keys cannot fail.
                serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
            }
            TranscriptFormat::Srt => self.render_cues(CueStyle::Srt),
            TranscriptFormat::Vtt => self.render_cues(CueStyle::Vtt),
        }
    }

    fn render_cues(&self, style: CueStyle) -> String {
        let mut out = String::new();
        if style == CueStyle::Vtt {
            out.push_str("WEBVTT\n\n");
        }
        for (index, segment) in self.segments.iter().enumerate() {
            if style == CueStyle::Srt {
                let _ = writeln!(out, "{}", index + 1);
            }
            let _ = writeln!(
                out,
                "{} --> {}",
                cue_time(segment.start, style),
                cue_time(segment.end, style)
            );
            let _ = writeln!(out, "{}\n", segment.text);
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CueStyle {
    Srt,
    Vtt,
}

/// `HH:MM:SS,mmm` for SRT, `HH:MM:SS.mmm` for WebVTT.
fn cue_time(seconds: f64, style: CueStyle) -> String {
    let millis = (seconds.max(0.0) * 1000.0).round() as u64;
    let (hours, rest) = (millis / 3_600_000, millis % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (secs, millis) = (rest / 1000, rest % 1000);
    let separator = if style == CueStyle::Srt { ',' } else { '.' };
    format!("{hours:02}:{minutes:02}:{secs:02}{separator}{millis:03}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(id: usize, start: f64, end: f64, text: &str) -> Segment {
        Segment {
            id,
            start,
            end,
            text: text.to_owned(),
            avg_logprob: -0.2,
            no_speech_prob: 0.01,
            temperature: 0.0,
            confidence: (-0.2f32).exp(),
        }
    }

    fn sample() -> Transcript {
        Transcript::from_segments(
            vec![
                segment(0, 0.0, 2.5, "Hello there."),
                segment(1, 2.5, 3661.0625, "General review."),
            ],
            3662.0,
            "en",
        )
    }

    #[test]
    fn text_joins_segments() {
        assert_eq!(sample().text, "Hello there. General review.");
        assert_eq!(
            sample().render(TranscriptFormat::Text),
            "Hello there. General review.\n"
        );
    }

    #[test]
    fn srt_numbers_cues_and_uses_commas() {
        let srt = sample().render(TranscriptFormat::Srt);
        assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n"));
        assert!(srt.contains("00:00:02,500 --> 01:01:01,063\nGeneral review."));
    }

    #[test]
    fn vtt_has_header_and_dots() {
        let vtt = sample().render(TranscriptFormat::Vtt);
        assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n"));
    }

    #[test]
    fn json_round_trips() {
        let json = sample().render(TranscriptFormat::Json);
        let back: Transcript = serde_json::from_str(&json).expect("valid json");
        assert_eq!(back, sample());
    }

    #[test]
    fn format_parses_case_insensitively() {
        assert_eq!("SRT".parse::<TranscriptFormat>(), Ok(TranscriptFormat::Srt));
        assert!("doc".parse::<TranscriptFormat>().is_err());
    }
}

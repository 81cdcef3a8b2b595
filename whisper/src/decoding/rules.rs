//! Whisper's logit rules: suppressed tokens, blank suppression and timestamp rules.
//!
//! They follow CTranslate2's `ApplyTimestampRules` (itself OpenAI's), so that
//! the same weights decode to the same tokens as the reference implementation.

use crate::model::ModelSpec;

/// The token ids the rules need, resolved once per model.
#[derive(Debug, Clone)]
pub struct LogitRules {
    suppress: Vec<u32>,
    suppress_at_begin: Vec<u32>,
    eot: u32,
    no_timestamps: u32,
    timestamp_begin: u32,
    timestamp_end: u32,
    /// `None` when decoding without timestamps.
    max_initial_timestamp: Option<u32>,
}

impl LogitRules {
    /// Rules for `spec`; `max_initial_timestamp_index` is `None` without timestamps.
    pub fn new(
        spec: &ModelSpec,
        suppress_blank: bool,
        max_initial_timestamp_index: Option<u32>,
    ) -> Self {
        Self {
            suppress: spec.suppress_ids.clone(),
            suppress_at_begin: if suppress_blank {
                spec.suppress_ids_begin.clone()
            } else {
                Vec::new()
            },
            eot: spec.eot,
            no_timestamps: spec.no_timestamps,
            timestamp_begin: spec.timestamp_begin,
            timestamp_end: spec.vocab_size as u32 - 1,
            max_initial_timestamp: max_initial_timestamp_index
                .map(|index| spec.timestamp_begin + index),
        }
    }

    /// Masks `logits` (one row) in place given the tokens generated so far.
    pub fn apply(&self, logits: &mut [f32], generated: &[u32]) {
        let vocab = logits.len();
        let mut mask = |range: std::ops::Range<usize>| {
            let (start, end) = (range.start.min(vocab), range.end.min(vocab));
            for value in &mut logits[start..end] {
                *value = f32::NEG_INFINITY;
            }
        };
        for &token in &self.suppress {
            mask(token as usize..token as usize + 1);
        }
        if generated.is_empty() {
            for &token in &self.suppress_at_begin {
                mask(token as usize..token as usize + 1);
            }
        }
        let Some(max_initial) = self.max_initial_timestamp else {
            return;
        };
        let (begin, end) = (self.timestamp_begin as usize, self.timestamp_end as usize);
        mask(self.no_timestamps as usize..self.no_timestamps as usize + 1);

        let last = generated.last().copied();
        // With one token generated, it counts as its own penultimate (as in OpenAI's rules).
        let penultimate = generated
            .len()
            .checked_sub(2)
            .map_or(last, |i| Some(generated[i]));
        let check_timestamp_mass = match (last, penultimate) {
            (None, _) => {
                // The first token must be a timestamp, and not too late a one.
                mask(0..begin);
                mask(max_initial as usize + 1..end + 1);
                false
            }
            (Some(last), Some(penultimate))
                if self.is_timestamp(last) && self.is_timestamp(penultimate) =>
            {
                // A closed pair: text (or EOT) must follow.
                mask(begin..end + 1);
                false
            }
            (Some(last), _) if self.is_timestamp(last) => {
                // An open timestamp: another timestamp or EOT, never an earlier one.
                mask(0..self.eot as usize);
                mask(begin..last as usize);
                true
            }
            _ => {
                // Timestamps never decrease.
                if let Some(&last_timestamp) =
                    generated.iter().rev().find(|&&t| self.is_timestamp(t))
                {
                    mask(begin..last_timestamp as usize + 1);
                }
                true
            }
        };
        if check_timestamp_mass && self.timestamp_mass_wins(logits) {
            let begin = begin.min(logits.len());
            for value in &mut logits[..begin] {
                *value = f32::NEG_INFINITY;
            }
        }
    }

    /// Masks end-of-text in `logits` until a timestamp at or after
    /// `end_not_before` was generated: the window still has speech to come
    /// (see [`super::Request::end_not_before`]).
    pub fn hold_end(&self, logits: &mut [f32], generated: &[u32], end_not_before: Option<u32>) {
        let Some(not_before) = end_not_before else {
            return;
        };
        let reached = generated
            .iter()
            .any(|&token| self.is_timestamp(token) && token >= not_before);
        if !reached {
            if let Some(value) = logits.get_mut(self.eot as usize) {
                *value = f32::NEG_INFINITY;
            }
        }
    }

    fn is_timestamp(&self, token: u32) -> bool {
        token >= self.timestamp_begin
    }

    /// Whether the total probability of all timestamps beats every single text token.
    fn timestamp_mass_wins(&self, logits: &[f32]) -> bool {
        let begin = (self.timestamp_begin as usize).min(logits.len());
        let max_text = max_of(&logits[..begin]);
        let timestamps = &logits[begin..];
        let max_timestamp = max_of(timestamps);
        if max_timestamp == f32::NEG_INFINITY {
            return false;
        }
        let sum: f32 = timestamps.iter().map(|&x| (x - max_timestamp).exp()).sum();
        // Both sides share the log-softmax normaliser, so compare in logit space.
        max_timestamp + sum.ln() > max_text
    }
}

fn max_of(values: &[f32]) -> f32 {
    values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// log-softmax of one row into `out` (same length).
pub fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let max = max_of(logits);
    let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    let log_norm = max + sum.ln();
    out.clear();
    out.extend(logits.iter().map(|&x| x - log_norm));
}

/// Probability of `token` under the softmax of the raw `logits`.
pub fn token_probability(logits: &[f32], token: u32) -> f32 {
    let max = max_of(logits);
    let sum: f32 = logits.iter().map(|&x| (x - max).exp()).sum();
    logits
        .get(token as usize)
        .map_or(0.0, |&x| (x - max).exp() / sum)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A toy vocabulary: text 0..10, eot 10, sot 11, no_timestamps 12, timestamps 13..20.
    pub(crate) fn toy_spec() -> ModelSpec {
        ModelSpec {
            name: "toy".into(),
            n_mels: 80,
            n_audio_ctx: 1500,
            n_text_ctx: 448,
            d_model: 8,
            n_heads: 2,
            n_decoder_layers: 1,
            n_encoder_layers: None,
            vocab_size: 20,
            multilingual: false,
            eot: 10,
            sot: 11,
            transcribe: 11,
            translate: 11,
            sot_prev: 11,
            sot_lm: None,
            no_speech: 11,
            no_timestamps: 12,
            timestamp_begin: 13,
            lang_ids: vec![],
            suppress_ids: vec![3, 11],
            suppress_ids_begin: vec![0, 10],
            layout: String::new(),
        }
    }

    fn allowed(logits: &[f32]) -> Vec<usize> {
        (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect()
    }

    #[test]
    fn suppresses_tokens_and_blank_at_begin_without_timestamps() {
        let rules = LogitRules::new(&toy_spec(), true, None);
        let mut logits = vec![0.0; 20];
        rules.apply(&mut logits, &[]);
        let first = allowed(&logits);
        assert!(!first.contains(&3) && !first.contains(&0) && !first.contains(&10));
        let mut later = vec![0.0; 20];
        rules.apply(&mut later, &[5]);
        let later = allowed(&later);
        assert!(later.contains(&0) && later.contains(&10) && !later.contains(&3));
    }

    #[test]
    fn first_token_is_an_early_timestamp() {
        let rules = LogitRules::new(&toy_spec(), true, Some(2));
        let mut logits = vec![0.0; 20];
        rules.apply(&mut logits, &[]);
        assert_eq!(allowed(&logits), vec![13, 14, 15]);
    }

    #[test]
    fn open_timestamp_is_followed_by_a_later_timestamp_or_eot() {
        let rules = LogitRules::new(&toy_spec(), true, Some(2));
        let mut logits = vec![0.0; 20];
        logits[10] = 5.0; // EOT is likely, so the timestamp-mass rule does not fire
        rules.apply(&mut logits, &[13, 5, 16]);
        assert_eq!(allowed(&logits), vec![10, 16, 17, 18, 19]);
    }

    #[test]
    fn a_lone_first_timestamp_counts_as_a_pair() {
        let rules = LogitRules::new(&toy_spec(), true, Some(2));
        let mut logits = vec![0.0; 20];
        rules.apply(&mut logits, &[13]);
        assert!(allowed(&logits).iter().all(|&t| t < 13));
    }

    #[test]
    fn closed_pair_is_followed_by_text() {
        let rules = LogitRules::new(&toy_spec(), true, Some(2));
        let mut logits = vec![0.0; 20];
        rules.apply(&mut logits, &[13, 5, 16, 16]);
        assert!(allowed(&logits).iter().all(|&t| t < 13));
    }

    #[test]
    fn timestamps_never_decrease_after_text() {
        let rules = LogitRules::new(&toy_spec(), true, Some(2));
        let mut logits = vec![0.0; 20];
        logits[5] = 10.0; // text dominates, so the mass rule does not fire
        rules.apply(&mut logits, &[13, 5, 16, 16, 5]);
        let ok = allowed(&logits);
        assert!(ok.iter().all(|&t| !(13..=16).contains(&t)), "{ok:?}");
        assert!(ok.contains(&17) && ok.contains(&5));
    }

    #[test]
    fn timestamp_mass_forces_a_timestamp() {
        let rules = LogitRules::new(&toy_spec(), true, Some(2));
        let mut logits = vec![0.0; 20];
        for value in &mut logits[13..] {
            *value = 1.0;
        }
        rules.apply(&mut logits, &[13, 5]);
        let ok = allowed(&logits);
        assert!(ok.iter().all(|&t| t >= 14), "{ok:?}");
    }

    #[test]
    fn the_end_waits_for_the_held_timestamp() {
        let spec = toy_spec();
        let rules = LogitRules::new(&spec, false, Some(2));
        let held = |generated: &[u32]| {
            let mut logits = vec![0.0; 20];
            rules.hold_end(&mut logits, generated, Some(16));
            logits[10] == f32::NEG_INFINITY
        };
        assert!(held(&[13, 1, 2, 15, 15, 3]), "only up to timestamp 15");
        assert!(!held(&[13, 1, 2, 16]), "16 reached");
        assert!(!held(&[13, 1, 17, 17, 4]), "beyond");
        let mut logits = vec![0.0; 20];
        rules.hold_end(&mut logits, &[13, 1], None);
        assert_eq!(logits[10], 0.0, "no hold");
    }

    #[test]
    fn log_softmax_normalises() {
        let mut out = Vec::new();
        log_softmax(&[1.0, 2.0, 3.0], &mut out);
        let total: f32 = out.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((token_probability(&[0.0, 0.0], 1) - 0.5).abs() < 1e-6);
    }
}

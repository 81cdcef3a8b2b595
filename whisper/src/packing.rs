//! Cross-input window packing: short inputs share one 30 s window.
//!
//! Whisper pads every window to 30 s, so a 7 s dictation leaves three quarters
//! of the encoder's work on silence. Packing lays several short inputs (from
//! different jobs) end to end in one window, separated by [`GAP_SECONDS`] of
//! silence, decodes the window once with timestamps, and gives each input the
//! segments that lie within its own stretch of the window.
//!
//! Only inputs that start a recording (no prompt: nothing conditions them on
//! another input's text) and are at most [`MAX_PACKED_SECONDS`] long are
//! packed. A pack is split only when every segment overlaps exactly one
//! input's stretch (reaching at most [`TOLERANCE_SECONDS`] into another; the
//! silence between stretches holds no words, so a segment may span it) and
//! each input's segments span it (to within [`COVERAGE_SLACK_SECONDS`] at
//! either end); otherwise its inputs are decoded again unpacked. So a
//! segment, and with it a word, never moves from one input to another on the
//! timestamps' evidence; what packing can change is the decoding of each
//! stretch, which the benchmark compares against unpacked decoding.

use crate::audio::SAMPLE_RATE;
use crate::transcribe::{Continued, Engine, TranscribeOptions};
use crate::WhisperError;
use mmt_core::{Segment, Transcript};

/// Silence between packed inputs: long enough that Whisper closes a segment.
pub const GAP_SECONDS: f64 = 1.5;
/// The longest input that is packed.
pub const MAX_PACKED_SECONDS: f64 = 12.0;
/// The longest packed window: below 30 s, so the last input's segment ends in
/// the window rather than spilling into a second one.
pub const MAX_PACK_SECONDS: f64 = 28.0;
/// How far a segment may reach into a stretch other than its owner's: less
/// than a spoken word, so a segment that holds words of two inputs is refused.
/// Into the silence between stretches a segment may reach as far as it likes:
/// Whisper often ends a segment where the next speech starts, or starts it
/// where the last one ended, and silence holds no words to misplace.
pub const TOLERANCE_SECONDS: f64 = 0.3;

/// How much of an input's start or end its segments may leave uncovered
/// before the split is distrusted: the model sometimes ends an input's text
/// early when the next input follows, and that text would be lost.
pub const COVERAGE_SLACK_SECONDS: f64 = 1.5;

/// Where one input lies in a packed window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    /// Index of the input.
    pub input: usize,
    /// Start in the packed window, seconds.
    pub offset: f64,
    /// Length, seconds.
    pub duration: f64,
}

/// Groups eligible inputs into packs of two or more that fit
/// [`MAX_PACK_SECONDS`]; inputs left alone are not in any pack.
///
/// First fit by decreasing length: each input, longest first, joins the first
/// pack it fits in. That leaves fewer, fuller windows than filling packs in
/// arrival order, and every window saved is an encoder pass saved. Within a
/// pack the inputs keep their order.
pub fn plan_packs(durations: &[f64], eligible: &[bool]) -> Vec<Vec<Member>> {
    let mut candidates: Vec<usize> = (0..durations.len())
        .filter(|&input| {
            let duration = durations[input];
            eligible.get(input) == Some(&true) && duration > 0.0 && duration <= MAX_PACKED_SECONDS
        })
        .collect();
    candidates.sort_by(|&a, &b| durations[b].total_cmp(&durations[a]).then(a.cmp(&b)));
    // Each bin: its inputs and the seconds they take with the gaps between.
    let mut bins: Vec<(Vec<usize>, f64)> = Vec::new();
    for input in candidates {
        let duration = durations[input];
        match bins
            .iter_mut()
            .find(|(_, length)| length + GAP_SECONDS + duration <= MAX_PACK_SECONDS)
        {
            Some((inputs, length)) => {
                inputs.push(input);
                *length += GAP_SECONDS + duration;
            }
            None => bins.push((vec![input], duration)),
        }
    }
    let mut packs: Vec<Vec<Member>> = bins
        .into_iter()
        .filter(|(inputs, _)| inputs.len() >= 2)
        .map(|(mut inputs, _)| {
            inputs.sort_unstable();
            lay_out(&inputs, durations)
        })
        .collect();
    packs.sort_by_key(|pack| pack.first().map(|member| member.input));
    packs
}

/// The members of a pack of `inputs`, end to end with [`GAP_SECONDS`] between.
fn lay_out(inputs: &[usize], durations: &[f64]) -> Vec<Member> {
    let mut offset = 0.0;
    inputs
        .iter()
        .map(|&input| {
            let member = Member {
                input,
                offset,
                duration: durations[input],
            };
            offset += durations[input] + GAP_SECONDS;
            member
        })
        .collect()
}

/// The samples of a pack: its inputs with silence between them.
fn pack_samples(inputs: &[&[f32]], pack: &[Member]) -> Vec<f32> {
    let rate = f64::from(SAMPLE_RATE);
    let mut samples = Vec::new();
    for member in pack {
        let start = (member.offset * rate).round() as usize;
        samples.resize(start, 0.0);
        samples.extend_from_slice(inputs[member.input]);
    }
    samples
}

/// One member's share of a pack: its segments on its own timeline, and the
/// tokens of each.
pub type MemberShare = (Vec<Segment>, Vec<Vec<u32>>);

/// The share of each member; `None` when a segment overlaps no member's
/// stretch or more than one (beyond [`TOLERANCE_SECONDS`]), or a member's
/// segments leave its start or end uncovered (nothing received, or text cut
/// short).
pub fn split_pack(
    pack: &[Member],
    segments: &[Segment],
    tokens: &[Vec<u32>],
) -> Option<Vec<MemberShare>> {
    let mut split: Vec<MemberShare> = vec![(Vec::new(), Vec::new()); pack.len()];
    for (index, segment) in segments.iter().enumerate() {
        let owner = owner_of(pack, segment)?;
        let member = pack[owner];
        let mut moved = segment.clone();
        moved.start = (segment.start - member.offset).clamp(0.0, member.duration);
        moved.end = (segment.end - member.offset).clamp(moved.start, member.duration);
        moved.id = split[owner].0.len();
        split[owner].0.push(moved);
        split[owner]
            .1
            .push(tokens.get(index).cloned().unwrap_or_default());
    }
    let covered = pack.iter().zip(&split).all(|(member, (segments, _))| {
        match (segments.first(), segments.last()) {
            (Some(first), Some(last)) => {
                first.start <= COVERAGE_SLACK_SECONDS
                    && last.end >= member.duration - COVERAGE_SLACK_SECONDS
            }
            _ => false,
        }
    });
    covered.then_some(split)
}

/// The one member whose stretch `segment` overlaps; `None` if it overlaps
/// none (text in the silence between inputs) or reaches more than
/// [`TOLERANCE_SECONDS`] into a second one.
fn owner_of(pack: &[Member], segment: &Segment) -> Option<usize> {
    let overlaps: Vec<f64> = pack
        .iter()
        .map(|member| {
            let start = segment.start.max(member.offset);
            let end = segment.end.min(member.offset + member.duration);
            (end - start).max(0.0)
        })
        .collect();
    let (owner, &most) = overlaps
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    let shared = overlaps
        .iter()
        .enumerate()
        .any(|(other, &overlap)| other != owner && overlap > TOLERANCE_SECONDS);
    (most > 0.0 && !shared).then_some(owner)
}

/// [`Engine::transcribe_continuing`] with packing: see the module docs.
pub(crate) fn transcribe_packed(
    engine: &mut Engine,
    inputs: &[&[f32]],
    prompts: &[&[u32]],
    options: &TranscribeOptions,
) -> Result<Vec<Continued>, WhisperError> {
    let rate = f64::from(SAMPLE_RATE);
    let durations: Vec<f64> = inputs.iter().map(|s| s.len() as f64 / rate).collect();
    let eligible: Vec<bool> = prompts.iter().map(|p| p.is_empty()).collect();
    let packs = plan_packs(&durations, &eligible);
    let mut packed = vec![false; inputs.len()];
    for member in packs.iter().flatten() {
        packed[member.input] = true;
    }

    // One decoding call for the inputs left alone and the packs together.
    let alone: Vec<usize> = (0..inputs.len()).filter(|&i| !packed[i]).collect();
    let pack_audio: Vec<Vec<f32>> = packs.iter().map(|p| pack_samples(inputs, p)).collect();
    let mut call_inputs: Vec<&[f32]> = alone.iter().map(|&i| inputs[i]).collect();
    let mut call_prompts: Vec<&[u32]> = alone.iter().map(|&i| prompts[i]).collect();
    call_inputs.extend(pack_audio.iter().map(Vec::as_slice));
    call_prompts.extend(std::iter::repeat_n(&[][..], packs.len()));
    // A packed window's decoding may not end before its last input's end is
    // near: split_pack would refuse the pack anyway, and a further window for
    // the rest costs a whole encoder pass.
    let mut speech_until: Vec<Option<f64>> = vec![None; alone.len()];
    speech_until.extend(packs.iter().map(|pack| {
        pack.last()
            .map(|last| last.offset + last.duration - COVERAGE_SLACK_SECONDS)
    }));
    let mut decoded =
        engine.decode_streams_holding(&call_inputs, &call_prompts, &speech_until, options)?;
    let pack_results = decoded.split_off(alone.len());

    let mut results: Vec<Option<Continued>> = vec![None; inputs.len()];
    for (&input, result) in alone.iter().zip(decoded) {
        results[input] = Some(result.continued);
    }
    let language = pack_results
        .first()
        .map(|d| d.continued.transcript.language.clone())
        .unwrap_or_default();
    let mut unpack = Vec::new();
    for (pack, result) in packs.iter().zip(pack_results) {
        let transcript = &result.continued.transcript;
        match split_pack(pack, &transcript.segments, &result.segment_tokens) {
            Some(split) => {
                for (member, (segments, tokens)) in pack.iter().zip(split) {
                    results[member.input] =
                        Some(member_result(engine, member, segments, &tokens, &language));
                }
            }
            None => unpack.extend(pack.iter().map(|member| member.input)),
        }
    }
    let redone = packs
        .iter()
        .filter(|pack| pack.first().is_some_and(|m| unpack.contains(&m.input)))
        .count();
    engine.count_packs(packs.len() - redone, redone);
    if !unpack.is_empty() {
        tracing::debug!(
            inputs = unpack.len(),
            "packed windows did not split cleanly; decoding them alone"
        );
        let again: Vec<&[f32]> = unpack.iter().map(|&i| inputs[i]).collect();
        let no_prompts = vec![&[][..]; unpack.len()];
        let redone = engine.decode_streams(&again, &no_prompts, options)?;
        for (&input, result) in unpack.iter().zip(redone) {
            results[input] = Some(result.continued);
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.ok_or_else(|| WhisperError::Inference {
                reason: "packing lost an input".into(),
            })
        })
        .collect()
}

/// A member's transcript, and as context its segments' text tokens (the
/// timestamps were the pack's, not its own).
fn member_result(
    engine: &Engine,
    member: &Member,
    segments: Vec<Segment>,
    tokens: &[Vec<u32>],
    language: &str,
) -> Continued {
    let timestamp_begin = engine.model().spec().timestamp_begin;
    let context = tokens
        .iter()
        .flatten()
        .copied()
        .filter(|&token| token < timestamp_begin)
        .collect();
    Continued {
        transcript: Transcript::from_segments(segments, member.duration, language),
        context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(start: f64, end: f64, text: &str) -> Segment {
        Segment {
            id: 0,
            start,
            end,
            text: text.into(),
            avg_logprob: -0.2,
            no_speech_prob: 0.01,
            temperature: 0.0,
            confidence: 0.8,
        }
    }

    #[test]
    fn packs_fill_windows_longest_first_and_skip_what_cannot_be_packed() {
        let durations = [7.0, 8.0, 20.0, 9.0, 6.0, 10.0, 5.0];
        let eligible = [true, true, true, true, false, true, true];
        let packs = plan_packs(&durations, &eligible);
        let inputs: Vec<Vec<usize>> = packs
            .iter()
            .map(|p| p.iter().map(|m| m.input).collect())
            .collect();
        // 20 s is too long; 6 s has a prompt. Longest first: 10 + 9 (+ 8
        // would make 30), 8 + 7, and 5 fits beside 10 and 9: 27 s.
        assert_eq!(inputs, [vec![0, 1], vec![3, 5, 6]]);
        assert_eq!(packs[0][1].offset, 8.5);
        assert_eq!(packs[1][1].offset, 10.5);
        assert_eq!(packs[1][2].offset, 22.0);
        assert!(packs
            .iter()
            .all(|p| p.last().map_or(0.0, |m| m.offset + m.duration) <= MAX_PACK_SECONDS));
    }

    #[test]
    fn a_lone_input_is_not_a_pack() {
        assert!(plan_packs(&[7.0], &[true]).is_empty());
        assert!(plan_packs(&[7.0, 25.0], &[true, true]).is_empty());
    }

    #[test]
    fn samples_are_laid_out_with_silence_between() {
        let a = vec![1.0f32; 16_000];
        let b = vec![2.0f32; 8_000];
        let pack = plan_packs(&[1.0, 0.5], &[true, true]).remove(0);
        let samples = pack_samples(&[&a, &b], &pack);
        assert_eq!(samples.len(), 16_000 + 24_000 + 8_000);
        assert_eq!(samples[15_999], 1.0);
        assert_eq!(samples[20_000], 0.0);
        assert_eq!(samples[40_000], 2.0);
    }

    #[test]
    fn segments_go_to_the_input_whose_stretch_holds_them() {
        let pack = plan_packs(&[7.0, 8.0], &[true, true]).remove(0);
        let segments = [
            segment(0.0, 4.0, "first one"),
            segment(4.0, 7.4, "first two"),
            segment(8.4, 16.6, "second"),
        ];
        let tokens = vec![vec![1], vec![2], vec![3]];
        let split = split_pack(&pack, &segments, &tokens).unwrap();
        assert_eq!(split[0].0.len(), 2);
        assert_eq!(split[0].0[1].end, 7.0, "clamped to the input");
        assert_eq!(split[1].0[0].start, 0.0);
        assert_eq!(split[1].0[0].end, 8.0);
        assert_eq!(split[1].0[0].id, 0);
        assert_eq!(split[1].1, [vec![3]]);
    }

    #[test]
    fn a_segment_across_two_inputs_or_an_empty_input_refuses_the_split() {
        let pack = plan_packs(&[7.0, 8.0], &[true, true]).remove(0);
        let across = [segment(5.0, 10.0, "joined")];
        assert!(split_pack(&pack, &across, &[vec![1]]).is_none());
        let only_first = [segment(0.0, 6.0, "first")];
        assert!(split_pack(&pack, &only_first, &[vec![1]]).is_none());
        let cut_short = [
            segment(0.0, 6.5, "first"),
            segment(8.5, 12.0, "second, half"),
        ];
        assert!(split_pack(&pack, &cut_short, &[vec![1], vec![2]]).is_none());
        let in_gap = [
            segment(0.0, 6.0, "first"),
            segment(7.7, 8.3, "noise"),
            segment(9.0, 15.0, "second"),
        ];
        assert!(split_pack(&pack, &in_gap, &[vec![1], vec![2], vec![3]]).is_none());
        let reaching_into_the_next = [
            segment(0.0, 7.5, "first"),
            segment(6.0, 9.0, "first end, second start"),
            segment(9.0, 16.5, "second"),
        ];
        let tokens = [vec![1], vec![2], vec![3]];
        assert!(split_pack(&pack, &reaching_into_the_next, &tokens).is_none());
    }

    #[test]
    fn segments_may_reach_across_the_silence_but_not_into_another_input() {
        // Stretches: 0-7 and 8.5-16.5; Whisper put the boundaries in the gap.
        let pack = plan_packs(&[7.0, 8.0], &[true, true]).remove(0);
        let segments = [
            segment(0.0, 4.0, "first one"),
            segment(4.0, 8.5, "first two"),
            segment(8.5, 16.5, "second"),
        ];
        let tokens = vec![vec![1], vec![2], vec![3]];
        let split = split_pack(&pack, &segments, &tokens).expect("splits");
        assert_eq!(split[0].1, [vec![1], vec![2]]);
        assert_eq!(split[0].0[1].end, 7.0, "clamped to the input");
        assert_eq!(split[1].1, [vec![3]]);
        let early_start = [segment(0.0, 7.0, "first"), segment(7.0, 16.5, "second")];
        let split = split_pack(&pack, &early_start, &[vec![1], vec![2]]).expect("splits");
        assert_eq!(split[1].0[0].start, 0.0);
        let a_word_too_far = [segment(0.0, 8.9, "first"), segment(8.9, 16.5, "second")];
        assert!(
            split_pack(&pack, &a_word_too_far, &[vec![1], vec![2]]).is_none(),
            "0.4 s into the second input"
        );
    }
}

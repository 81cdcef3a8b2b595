//! Long-form transcription: seeking over 30 s windows, batched across inputs.
//!
//! Each input keeps its own seek position and prompt, as Whisper's long-form
//! algorithm needs; every round takes the next window of up to `batch_size`
//! inputs, encodes them in one encoder call and decodes them together.

use crate::decoding::rules::LogitRules;
use crate::decoding::{generate, Generated, Request, Strategy};
use crate::mel::MelFrontEnd;
use crate::model::{stack_windows, ModelOptions, WhisperModel};
use crate::tokenizer::Tokenizer;
use crate::work::WorkCounters;
use crate::WhisperError;
use mmt_core::{Segment, Transcript};
use ndarray::Array2;
use std::io::Write as _;

/// Seconds per mel frame (hop 160 at 16 kHz).
const SECONDS_PER_FRAME: f64 = 0.01;
/// Most decoder rows (windows × samples or beams) in one model call.
const MAX_DECODER_ROWS: usize = 16;

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per timestamp token.
const FRAMES_PER_TIMESTAMP: usize = 2;

/// Tokens a window may generate per second of audio in it. Dictation runs at
/// about three words a second, five tokens with punctuation and timestamps;
/// a decoding far past that is a loop or a ramble, typically a sample at a
/// high fallback temperature, which Whisper would run on to half the text
/// context (224 tokens) only to reject it. A full 30 s window keeps that
/// limit; a 5 s clip stops at 60 tokens.
const TOKENS_PER_AUDIO_SECOND: f64 = 12.0;
/// The budget of the shortest windows.
const MIN_TOKEN_BUDGET: usize = 32;

/// The most tokens a window holding `seconds` of audio may generate. It
/// depends on the window alone, so a row's limit is its own (ADR 6).
fn token_budget(seconds: f64) -> usize {
    MIN_TOKEN_BUDGET.max((seconds.max(0.0) * TOKENS_PER_AUDIO_SECOND).ceil() as usize)
}

/// Chunks per conditioned stream of `mmt run` and `mmt serve` (see
/// [`TranscribeOptions::stream_chunks`]).
pub const DEFAULT_STREAM_CHUNKS: u32 = 8;

/// Decoding options; the defaults are Whisper's (and faster-whisper's).
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// Beam width; 1 decodes greedily.
    pub beam_size: usize,
    /// Beam search stops once `beam_size × patience` hypotheses finished.
    pub patience: f32,
    /// Samples drawn at each fallback temperature above 0.
    pub best_of: usize,
    /// Temperatures tried in turn while a window's decoding looks unreliable.
    pub temperatures: Vec<f32>,
    /// Text compressing better than this (gzip ratio) is deemed repetitive.
    pub compression_ratio_threshold: Option<f32>,
    /// Mean token log-probability below this is deemed unreliable.
    pub log_prob_threshold: Option<f32>,
    /// Windows more likely silent than this (and unreliable) are skipped.
    pub no_speech_threshold: Option<f32>,
    /// Give the previous window's text as a prompt to the next.
    pub condition_on_previous_text: bool,
    /// Chunks per conditioned stream when a recording arrives as speech
    /// chunks (the pipeline): a recording of more chunks is cut into
    /// `ceil(chunks / stream_chunks)` runs of consecutive chunks of near-equal
    /// length, each decoded as its own stream, conditioned on its own previous
    /// text only, so that the runs of one long recording decode side by side.
    /// The cut depends on the recording alone. 0: one stream per recording.
    pub stream_chunks: u32,
    /// Stop conditioning after a window needed a temperature above this.
    pub prompt_reset_on_temperature: f32,
    /// Text that primes the first window (spelling of names, style).
    pub initial_prompt: Option<String>,
    /// Forbid a blank or end-of-text as the very first token.
    pub suppress_blank: bool,
    /// Decode plain text without timestamp tokens (segments then span whole windows).
    pub without_timestamps: bool,
    /// Latest allowed first timestamp, in seconds.
    pub max_initial_timestamp: f32,
    /// Windows (from different inputs) decoded together.
    pub batch_size: usize,
    /// Pack short inputs that start a recording (no prompt) into shared 30 s
    /// windows, separated by silence, and split the text back by timestamps
    /// (see `packing`).
    pub packing: bool,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            beam_size: 1,
            patience: 1.0,
            best_of: 5,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            log_prob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            stream_chunks: 0,
            prompt_reset_on_temperature: 0.5,
            initial_prompt: None,
            suppress_blank: true,
            without_timestamps: false,
            max_initial_timestamp: 1.0,
            batch_size: 8,
            packing: false,
        }
    }
}

impl TranscribeOptions {
    /// Only the first temperature: every window is decoded once, greedily (or
    /// by beam search), and kept even when it repeats itself or is unlikely.
    /// Faster on hard audio; faster-whisper's batched pipeline decodes so.
    pub fn without_fallback(self) -> Self {
        Self {
            temperatures: self.temperatures.into_iter().take(1).collect(),
            ..self
        }
    }

    /// For audio a voice-activity detector has already cut to speech (the
    /// pipeline's chunks): no window is skipped as silence. Whisper's
    /// no-speech gate drops a window whose no-speech probability is above
    /// the threshold and whose decoding is unlikely; on a chunk that holds
    /// speech that loses dictated words (a whole 27 s chunk of orders, in
    /// one unseen recording). Such a window is retried at higher
    /// temperatures instead, as any unlikely decoding is, and the likeliest
    /// attempt is kept. Silence never reaches the model: the detector leaves
    /// it out.
    pub fn for_speech_chunks(self) -> Self {
        Self {
            no_speech_threshold: None,
            ..self
        }
    }

    /// Every problem with the options, or nothing.
    pub fn validate(&self) -> Result<(), WhisperError> {
        let problem = if self.beam_size == 0 {
            Some("beam size must be at least 1")
        } else if self.batch_size == 0 {
            Some("batch size must be at least 1")
        } else if self.best_of == 0 {
            Some("best_of must be at least 1")
        } else if self.temperatures.is_empty() {
            Some("at least one temperature is needed")
        } else if self.temperatures.iter().any(|t| !(0.0..=2.0).contains(t)) {
            Some("temperatures must lie in 0..=2")
        } else if self.patience <= 0.0 {
            Some("patience must be positive")
        } else {
            None
        };
        match problem {
            Some(reason) => Err(WhisperError::InvalidOption {
                reason: reason.into(),
            }),
            None => Ok(()),
        }
    }
}

/// A loaded model, tokenizer and front end: everything needed to transcribe.
#[derive(Debug)]
pub struct Engine {
    model: WhisperModel,
    tokenizer: Tokenizer,
    front_end: MelFrontEnd,
    /// Fallback and packing counts; the model keeps its own call counts.
    work: WorkCounters,
}

impl Engine {
    /// Loads ONNX Runtime, the model graphs and the tokenizer.
    pub fn load(options: &ModelOptions) -> Result<Self, WhisperError> {
        let model = WhisperModel::load(options)?;
        let tokenizer =
            Tokenizer::from_file(&options.model_dir.join("tokenizer.json"), model.spec())?;
        let front_end = MelFrontEnd::new(model.spec().n_mels);
        Ok(Self {
            model,
            tokenizer,
            front_end,
            work: WorkCounters::default(),
        })
    }

    /// The model work done since the engine was loaded.
    pub fn work(&self) -> WorkCounters {
        let calls = self.model.calls();
        WorkCounters {
            windows_encoded: calls.windows_encoded,
            decoder_calls: calls.decoder_calls,
            decoder_rows: calls.decoder_rows,
            decoder_tokens: calls.decoder_tokens,
            encoder_nanos: calls.encoder_nanos,
            decoder_nanos: calls.decoder_nanos,
            ..self.work
        }
    }

    /// Records how a batch of packed windows split (see [`crate::packing`]).
    pub(crate) fn count_packs(&mut self, split: usize, redone: usize) {
        self.work.packs_split += split as u64;
        self.work.packs_redone += redone as u64;
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &WhisperModel {
        &self.model
    }

    /// Transcribes one input of 16 kHz mono samples.
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcript, WhisperError> {
        self.transcribe_batch(&[samples], options)?
            .pop()
            .ok_or_else(|| WhisperError::Inference {
                reason: "no transcript produced".into(),
            })
    }

    /// Transcribes several inputs, batching their windows together.
    pub fn transcribe_batch(
        &mut self,
        inputs: &[&[f32]],
        options: &TranscribeOptions,
    ) -> Result<Vec<Transcript>, WhisperError> {
        let initial_prompt = match &options.initial_prompt {
            Some(text) => self.tokenizer.encode(&format!(" {}", text.trim()))?,
            None => Vec::new(),
        };
        let prompts = vec![initial_prompt.as_slice(); inputs.len()];
        Ok(self
            .transcribe_continuing(inputs, &prompts, options)?
            .into_iter()
            .map(|continued| continued.transcript)
            .collect())
    }

    /// Like [`Engine::transcribe_batch`], with each input continuing a previous
    /// one: `prompts[i]` are the tokens that precede input `i` (see
    /// [`Continued::context`]), given to the decoder as Whisper's
    /// previous-text prompt. Consecutive pieces of one recording keep the
    /// context that long-form decoding would have had.
    ///
    /// With [`TranscribeOptions::packing`], short inputs without a prompt
    /// share windows (see [`crate::packing`]).
    pub fn transcribe_continuing(
        &mut self,
        inputs: &[&[f32]],
        prompts: &[&[u32]],
        options: &TranscribeOptions,
    ) -> Result<Vec<Continued>, WhisperError> {
        options.validate()?;
        if prompts.len() != inputs.len() {
            return Err(WhisperError::InvalidOption {
                reason: "one prompt per input is needed".into(),
            });
        }
        if options.packing && !options.without_timestamps {
            return crate::packing::transcribe_packed(self, inputs, prompts, options);
        }
        Ok(self
            .decode_streams(inputs, prompts, options)?
            .into_iter()
            .map(|decoded| decoded.continued)
            .collect())
    }

    /// Long-form decoding of every input, each with its prompt; every
    /// segment comes with the tokens it was decoded from.
    pub(crate) fn decode_streams(
        &mut self,
        inputs: &[&[f32]],
        prompts: &[&[u32]],
        options: &TranscribeOptions,
    ) -> Result<Vec<Decoded>, WhisperError> {
        self.decode_streams_holding(inputs, prompts, &[], options)
    }

    /// [`Engine::decode_streams`], where `speech_until[i]` (seconds into
    /// input `i`), when known, is how far the decoding must get before it may
    /// end a window (see [`Request::end_not_before`]); inputs past the end of
    /// `speech_until` have none.
    pub(crate) fn decode_streams_holding(
        &mut self,
        inputs: &[&[f32]],
        prompts: &[&[u32]],
        speech_until: &[Option<f64>],
        options: &TranscribeOptions,
    ) -> Result<Vec<Decoded>, WhisperError> {
        let mut streams: Vec<Stream> = inputs
            .iter()
            .zip(prompts)
            .zip(speech_until.iter().chain(std::iter::repeat(&None)))
            .map(|((samples, prompt), &until)| {
                let mut stream =
                    Stream::new(self.front_end.log_mel(samples), samples.len(), prompt);
                stream.speech_until = until;
                stream
            })
            .collect();
        let mut next = 0;
        loop {
            let round = next_round(&streams, &mut next, options.batch_size);
            if round.is_empty() {
                break;
            }
            self.decode_round(&mut streams, &round, options)?;
        }
        let language = if self.model.spec().multilingual {
            "und"
        } else {
            "en"
        };
        Ok(streams
            .into_iter()
            .map(|stream| {
                let context = stream.all_tokens[stream.prompt_reset_since..].to_vec();
                Decoded {
                    continued: Continued {
                        transcript: Transcript::from_segments(
                            stream.segments,
                            stream.duration,
                            language,
                        ),
                        context,
                    },
                    segment_tokens: stream.segment_tokens,
                }
            })
            .collect())
    }

    /// Encodes and decodes the current window of each stream in `round`.
    fn decode_round(
        &mut self,
        streams: &mut [Stream],
        round: &[usize],
        options: &TranscribeOptions,
    ) -> Result<(), WhisperError> {
        let windows: Vec<Array2<f32>> = round.iter().map(|&i| streams[i].window()).collect();
        let mut cross = self.model.encode(stack_windows(&windows)?.view())?;
        let requests: Vec<Request> = round
            .iter()
            .enumerate()
            .map(|(row, &i)| self.request(&streams[i], row, options))
            .collect();
        let outcomes = self.decode_with_fallback(&mut cross, &requests, options)?;
        for (&stream_index, outcome) in round.iter().zip(outcomes) {
            self.advance(&mut streams[stream_index], outcome, options)?;
        }
        Ok(())
    }

    /// The prompt of a stream's next window.
    fn request(&self, stream: &Stream, row: usize, options: &TranscribeOptions) -> Request {
        let spec = self.model.spec();
        let mut prompt = Vec::new();
        let previous = &stream.all_tokens[stream.prompt_reset_since..];
        if !previous.is_empty() {
            prompt.push(spec.sot_prev);
            let keep = spec.n_text_ctx / 2 - 1;
            prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
        }
        let sot_index = prompt.len();
        prompt.push(spec.sot);
        if spec.multilingual {
            // Language detection is not supported yet: English, transcribe.
            if let Some(english) = self.tokenizer.token_id("<|en|>") {
                prompt.push(english);
            }
            prompt.push(spec.transcribe);
        }
        if options.without_timestamps {
            prompt.push(spec.no_timestamps);
        }
        let end_not_before = if options.without_timestamps {
            None
        } else {
            stream.speech_until.and_then(|until| {
                timestamp_ahead(
                    until,
                    stream.seek as f64 * SECONDS_PER_FRAME,
                    spec.timestamp_begin,
                )
            })
        };
        Request {
            window: row,
            prompt,
            sot_index,
            end_not_before,
            max_new_tokens: Some(token_budget(
                stream.segment_frames() as f64 * SECONDS_PER_FRAME,
            )),
        }
    }

    /// Decodes every request, retrying unreliable ones at higher temperatures.
    fn decode_with_fallback(
        &mut self,
        cross: &mut crate::model::CrossAttention,
        requests: &[Request],
        options: &TranscribeOptions,
    ) -> Result<Vec<Outcome>, WhisperError> {
        let spec = self.model.spec().clone();
        let max_initial = (!options.without_timestamps)
            .then(|| (options.max_initial_timestamp as f64 / TIME_PRECISION).round() as u32);
        let rules = LogitRules::new(&spec, options.suppress_blank, max_initial);
        // Whisper's sample length; `generate` also stops each request at the
        // end of the text context after its own prompt.
        let max_new_tokens = spec.n_text_ctx / 2;

        let mut attempts: Vec<Vec<Outcome>> = vec![Vec::new(); requests.len()];
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        for (round, &temperature) in options.temperatures.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                self.work.fallback_windows += pending.len() as u64;
                let windows: Vec<usize> = pending.iter().map(|&i| requests[i].window).collect();
                cross.retain(&windows)?;
            }
            let strategy = if temperature > 0.0 {
                Strategy::Sample {
                    temperature,
                    count: options.best_of,
                    seed: 0x5eed + round as u64,
                }
            } else if options.beam_size > 1 {
                Strategy::Beam {
                    size: options.beam_size,
                    patience: options.patience,
                }
            } else {
                Strategy::Greedy
            };
            // Sampling and beams decode several rows per window (sharing the
            // window's cross-attention K/V, but each with its own self-attention
            // cache and logits): bound the rows of one call.
            let rows_per_window = match strategy {
                Strategy::Sample { count, .. } => count.max(1),
                Strategy::Beam { size, .. } => size.max(1),
                Strategy::Greedy => 1,
            };
            let windows_per_call = (MAX_DECODER_ROWS / rows_per_window).max(1);
            // Windows with previous text and windows without are laid out
            // differently (see `decoding::generate`): they never share a call.
            let (conditioned, plain): (Vec<usize>, Vec<usize>) = pending
                .iter()
                .partition(|&&index| requests[index].sot_index > 0);
            let mut results = Vec::with_capacity(pending.len());
            for group in plain
                .chunks(windows_per_call)
                .chain(conditioned.chunks(windows_per_call))
            {
                let batch: Vec<Request> = group.iter().map(|&i| requests[i].clone()).collect();
                let generated = generate(
                    &mut self.model,
                    &mut *cross,
                    &batch,
                    &rules,
                    &strategy,
                    max_new_tokens,
                )?;
                results.extend(group.iter().copied().zip(generated));
            }
            let mut still_pending = Vec::new();
            for (index, generated) in results {
                let outcome = self.judge(generated, temperature)?;
                let retry = outcome.needs_fallback(options);
                attempts[index].push(outcome);
                if retry {
                    still_pending.push(index);
                }
            }
            pending = still_pending;
        }
        Ok(attempts
            .into_iter()
            .enumerate()
            .map(|(index, tries)| choose_outcome(tries, !pending.contains(&index), options))
            .collect())
    }

    fn judge(&self, generated: Generated, temperature: f32) -> Result<Outcome, WhisperError> {
        let text = self.tokenizer.decode(&generated.tokens)?;
        Ok(Outcome {
            compression_ratio: compression_ratio(text.trim()),
            generated,
            temperature,
        })
    }

    /// Turns a window's tokens into segments and moves the stream's seek.
    fn advance(
        &self,
        stream: &mut Stream,
        outcome: Outcome,
        options: &TranscribeOptions,
    ) -> Result<(), WhisperError> {
        let segment_frames = stream.segment_frames();
        if outcome.is_silence(options) {
            stream.seek += segment_frames;
            return Ok(());
        }
        let spec = self.model.spec();
        let time_offset = stream.seek as f64 * SECONDS_PER_FRAME;
        let split = split_by_timestamps(
            &outcome.generated.tokens,
            spec.timestamp_begin,
            time_offset,
            segment_frames,
        );
        stream.seek += split.advance_frames;
        for piece in split.pieces {
            let text = self.tokenizer.decode(&piece.tokens)?;
            if piece.start == piece.end || text.trim().is_empty() {
                continue;
            }
            stream.all_tokens.extend_from_slice(&piece.tokens);
            stream.segment_tokens.push(piece.tokens.clone());
            let generated = &outcome.generated;
            // The model may place a timestamp in the window's padding, past the
            // audio; a segment never ends after the audio does.
            let start = piece.start.min(stream.duration);
            stream.segments.push(Segment {
                id: stream.segments.len(),
                start,
                end: piece.end.min(stream.duration).max(start),
                text: text.trim().to_owned(),
                avg_logprob: generated.avg_logprob,
                no_speech_prob: generated.no_speech_prob,
                temperature: outcome.temperature,
                confidence: generated.avg_logprob.exp(),
            });
        }
        if !options.condition_on_previous_text
            || outcome.temperature > options.prompt_reset_on_temperature
        {
            stream.prompt_reset_since = stream.all_tokens.len();
        }
        Ok(())
    }
}

/// A transcript and the decoder context it leaves for what follows it.
#[derive(Debug, Clone)]
pub struct Continued {
    pub transcript: Transcript,
    /// Tokens to prompt the next piece of the same recording with (empty
    /// after a window that needed a high fallback temperature, as Whisper resets then).
    pub context: Vec<u32>,
}

/// One input's decoding, with the tokens behind each of its segments.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub continued: Continued,
    pub segment_tokens: Vec<Vec<u32>>,
}

/// The next streams to decode, round-robin from `next`, at most `batch_size`.
fn next_round(streams: &[Stream], next: &mut usize, batch_size: usize) -> Vec<usize> {
    let count = streams.len();
    let mut round = Vec::new();
    for step in 0..count {
        let index = (*next + step) % count;
        if streams[index].is_active() {
            round.push(index);
            if round.len() == batch_size {
                *next = (index + 1) % count;
                return round;
            }
        }
    }
    round
}

/// One input's progress through its windows.
#[derive(Debug)]
struct Stream {
    features: Array2<f32>,
    content_frames: usize,
    duration: f64,
    seek: usize,
    all_tokens: Vec<u32>,
    prompt_reset_since: usize,
    segments: Vec<Segment>,
    /// The tokens of each segment (timestamps included).
    segment_tokens: Vec<Vec<u32>>,
    /// Seconds into the input that a window's decoding must reach before it
    /// may end, when known.
    speech_until: Option<f64>,
}

impl Stream {
    fn new(features: Array2<f32>, samples: usize, initial_prompt: &[u32]) -> Self {
        // The front end pads one extra frame past the audio, as Whisper's does.
        let content_frames = features.ncols().saturating_sub(1);
        Self {
            features,
            content_frames,
            duration: samples as f64 / f64::from(crate::audio::SAMPLE_RATE),
            seek: 0,
            all_tokens: initial_prompt.to_vec(),
            prompt_reset_since: 0,
            segments: Vec::new(),
            segment_tokens: Vec::new(),
            speech_until: None,
        }
    }

    fn is_active(&self) -> bool {
        self.seek < self.content_frames
    }

    /// Frames of real audio in the current window.
    fn segment_frames(&self) -> usize {
        crate::mel::N_FRAMES.min(self.content_frames - self.seek)
    }

    /// The current window, zero-padded to 30 s like Whisper's `pad_or_trim`.
    fn window(&self) -> Array2<f32> {
        crate::mel::window(&self.features, self.seek)
    }
}

/// One decoding attempt of a window and how it was judged.
#[derive(Debug, Clone)]
struct Outcome {
    generated: Generated,
    temperature: f32,
    compression_ratio: f32,
}

impl Outcome {
    /// Text that compresses too well, or a decoding cut at its window's token
    /// budget: without that budget Whisper would run such a decoding on to
    /// 224 tokens, a loop whose compression ratio then gives it away, where
    /// the cut piece of a loop can be too short to compress past the
    /// threshold ("... QK-S-L-M-R-A-C-L-N-F-N-F-N-F-N" compresses 1.75:1)
    /// and would be kept.
    fn too_repetitive(&self, options: &TranscribeOptions) -> bool {
        options
            .compression_ratio_threshold
            .is_some_and(|limit| self.compression_ratio > limit || self.generated.cut_at_budget)
    }

    fn too_unlikely(&self, options: &TranscribeOptions) -> bool {
        options
            .log_prob_threshold
            .is_some_and(|limit| self.generated.avg_logprob < limit)
    }

    /// Whether the window is likely silence (then it is neither retried nor kept).
    fn is_silence(&self, options: &TranscribeOptions) -> bool {
        options
            .no_speech_threshold
            .is_some_and(|limit| self.generated.no_speech_prob > limit)
            && self.too_unlikely(options)
    }

    fn needs_fallback(&self, options: &TranscribeOptions) -> bool {
        (self.too_repetitive(options) || self.too_unlikely(options)) && !self.is_silence(options)
    }
}

/// The attempt to keep: the accepted one, or else the likeliest non-repetitive one.
fn choose_outcome(mut tries: Vec<Outcome>, accepted: bool, options: &TranscribeOptions) -> Outcome {
    let last_temperature = tries.last().map_or(0.0, |t| t.temperature);
    if accepted {
        if let Some(last) = tries.pop() {
            return last;
        }
    }
    let has_good = tries.iter().any(|t| !t.too_repetitive(options));
    let mut best = tries
        .into_iter()
        .filter(|t| !has_good || !t.too_repetitive(options))
        .max_by(|a, b| a.generated.avg_logprob.total_cmp(&b.generated.avg_logprob))
        .unwrap_or(Outcome {
            generated: Generated {
                tokens: Vec::new(),
                sum_logprob: 0.0,
                avg_logprob: 0.0,
                no_speech_prob: 1.0,
                cut_at_budget: false,
            },
            temperature: last_temperature,
            compression_ratio: 0.0,
        });
    // The prompt reset looks at the last temperature tried, as Whisper does.
    best.temperature = last_temperature;
    best
}

/// The timestamp token of `until` (seconds into the input) in the window
/// starting at `window_start`; `None` once the window starts past it.
fn timestamp_ahead(until: f64, window_start: f64, timestamp_begin: u32) -> Option<u32> {
    let ahead = until - window_start;
    (ahead > 0.0).then(|| timestamp_begin + (ahead / TIME_PRECISION).round() as u32)
}

/// A window's tokens cut into timed pieces.
#[derive(Debug, PartialEq)]
struct Split {
    pieces: Vec<Piece>,
    /// How far the stream's seek moves.
    advance_frames: usize,
}

#[derive(Debug, PartialEq)]
struct Piece {
    start: f64,
    end: f64,
    tokens: Vec<u32>,
}

/// Whisper's segmentation: consecutive timestamp tokens close a segment; an
/// unfinished last segment is dropped and decoded again from its start.
fn split_by_timestamps(
    tokens: &[u32],
    timestamp_begin: u32,
    time_offset: f64,
    segment_frames: usize,
) -> Split {
    let is_timestamp = |t: u32| t >= timestamp_begin;
    let time_of = |t: u32| time_offset + f64::from(t - timestamp_begin) * TIME_PRECISION;
    let single_timestamp_ending = tokens.len() >= 2
        && !is_timestamp(tokens[tokens.len() - 2])
        && is_timestamp(tokens[tokens.len() - 1]);
    let mut boundaries: Vec<usize> = (1..tokens.len())
        .filter(|&i| is_timestamp(tokens[i]) && is_timestamp(tokens[i - 1]))
        .collect();

    if boundaries.is_empty() {
        let duration = match tokens.iter().rev().find(|&&t| is_timestamp(t)) {
            Some(&last) if last != timestamp_begin => {
                f64::from(last - timestamp_begin) * TIME_PRECISION
            }
            _ => segment_frames as f64 * SECONDS_PER_FRAME,
        };
        return Split {
            pieces: vec![Piece {
                start: time_offset,
                end: time_offset + duration,
                tokens: tokens.to_vec(),
            }],
            advance_frames: segment_frames,
        };
    }
    if single_timestamp_ending {
        boundaries.push(tokens.len());
    }
    let mut pieces = Vec::with_capacity(boundaries.len());
    let mut last = 0;
    for &boundary in &boundaries {
        let slice = &tokens[last..boundary];
        pieces.push(Piece {
            start: time_of(slice[0]),
            end: time_of(slice[slice.len() - 1]),
            tokens: slice.to_vec(),
        });
        last = boundary;
    }
    let advance_frames = if single_timestamp_ending {
        // Nothing was said after the last timestamp: the whole window is done.
        segment_frames
    } else {
        (tokens[last - 1] - timestamp_begin) as usize * FRAMES_PER_TIMESTAMP
    };
    Split {
        pieces,
        advance_frames,
    }
}

/// How well the text compresses (zlib, as Whisper measures repetition).
fn compression_ratio(text: &str) -> f32 {
    if text.is_empty() {
        return 0.0;
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = encoder
        .write_all(text.as_bytes())
        .and_then(|_| encoder.finish())
        .map_or(text.len(), |bytes| bytes.len());
    text.len() as f32 / compressed.max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    const TB: u32 = 1000;

    #[test]
    fn a_window_may_generate_tokens_in_proportion_to_its_audio() {
        assert_eq!(token_budget(0.0), MIN_TOKEN_BUDGET);
        assert_eq!(token_budget(1.5), MIN_TOKEN_BUDGET);
        assert_eq!(token_budget(5.0), 60);
        assert_eq!(token_budget(-1.0), MIN_TOKEN_BUDGET);
        // A full window keeps Whisper's own limit, half the text context.
        assert!(token_budget(30.0) > 448 / 2);
    }

    #[test]
    fn pairs_of_timestamps_split_segments() {
        // <0.00> a b <1.00><1.00> c <2.00><2.40> d (unfinished)
        let tokens = [TB, 1, 2, TB + 50, TB + 50, 3, TB + 100, TB + 120, 4];
        let split = split_by_timestamps(&tokens, TB, 10.0, 3000);
        assert_eq!(split.pieces.len(), 2);
        assert_eq!(split.pieces[0].tokens, vec![TB, 1, 2, TB + 50]);
        assert!((split.pieces[0].start - 10.0).abs() < 1e-9);
        assert!((split.pieces[0].end - 11.0).abs() < 1e-9);
        assert!((split.pieces[1].end - 12.0).abs() < 1e-9);
        // Seek to the last closed timestamp (2.0 s = 100 tokens = 200 frames).
        assert_eq!(split.advance_frames, 200);
    }

    #[test]
    fn single_timestamp_ending_consumes_the_window() {
        let tokens = [TB, 1, TB + 50, TB + 50, 2, TB + 90];
        let split = split_by_timestamps(&tokens, TB, 0.0, 2500);
        assert_eq!(split.pieces.len(), 2);
        assert!((split.pieces[1].end - 1.8).abs() < 1e-9);
        assert_eq!(split.advance_frames, 2500);
    }

    #[test]
    fn no_timestamp_pair_is_one_segment_over_the_window() {
        let split = split_by_timestamps(&[1, 2, 3], TB, 30.0, 1234);
        assert_eq!(split.pieces.len(), 1);
        assert!((split.pieces[0].end - 42.34).abs() < 1e-9);
        assert_eq!(split.advance_frames, 1234);
    }

    #[test]
    fn repetitive_text_compresses_well() {
        let repetitive = "the patient the patient the patient ".repeat(20);
        assert!(compression_ratio(&repetitive) > 2.4);
        assert!(compression_ratio("Blood pressure is stable today.") < 2.4);
        assert_eq!(compression_ratio(""), 0.0);
    }

    fn outcome(avg_logprob: f32, no_speech_prob: f32, ratio: f32, temperature: f32) -> Outcome {
        Outcome {
            generated: Generated {
                tokens: vec![1],
                sum_logprob: f64::from(avg_logprob) * 2.0,
                avg_logprob,
                no_speech_prob,
                cut_at_budget: false,
            },
            temperature,
            compression_ratio: ratio,
        }
    }

    #[test]
    fn fallback_rules_follow_whisper() {
        let options = TranscribeOptions::default();
        assert!(!outcome(-0.3, 0.1, 1.5, 0.0).needs_fallback(&options));
        assert!(outcome(-1.5, 0.1, 1.5, 0.0).needs_fallback(&options));
        assert!(outcome(-0.3, 0.1, 3.0, 0.0).needs_fallback(&options));
        // Likely silence is not retried, and is skipped.
        let silent = outcome(-1.5, 0.9, 1.5, 0.0);
        assert!(!silent.needs_fallback(&options) && silent.is_silence(&options));
        // Confident text is kept even when no-speech is high.
        assert!(!outcome(-0.2, 0.9, 1.5, 0.0).is_silence(&options));
    }

    #[test]
    fn speech_chunks_are_never_skipped_as_silence() {
        // The first decoding of a 27 s chunk of dictation that Whisper's gate
        // dropped: four tokens, no-speech 0.614, mean log-probability -1.70.
        let unsure = outcome(-1.70, 0.614, 1.5, 0.0);
        assert!(unsure.is_silence(&TranscribeOptions::default()));
        let chunks = TranscribeOptions::default().for_speech_chunks();
        assert!(!unsure.is_silence(&chunks));
        assert!(
            unsure.needs_fallback(&chunks),
            "retried, as unlikely text is"
        );
        // Only the gate changes.
        assert!(!outcome(-0.3, 0.9, 1.5, 0.0).needs_fallback(&chunks));
        assert_eq!(
            chunks.temperatures,
            TranscribeOptions::default().temperatures
        );
    }

    #[test]
    fn a_decoding_cut_at_its_budget_counts_as_repetitive() {
        let options = TranscribeOptions::default();
        let mut cut = outcome(-0.2, 0.0, 1.75, 0.0);
        cut.generated.cut_at_budget = true;
        assert!(cut.too_repetitive(&options) && cut.needs_fallback(&options));
        // Failed everywhere, a complete attempt wins over a likelier cut one.
        let complete = outcome(-1.4, 0.0, 1.5, 0.2);
        let chosen = choose_outcome(vec![cut.clone(), complete], false, &options);
        assert!(!chosen.generated.cut_at_budget);
        // Without the repetition check, the cut is not held against it.
        let unchecked = TranscribeOptions {
            compression_ratio_threshold: None,
            ..TranscribeOptions::default()
        };
        assert!(!cut.needs_fallback(&unchecked));
    }

    #[test]
    fn failed_fallback_keeps_likeliest_non_repetitive_attempt() {
        let options = TranscribeOptions::default();
        let tries = vec![
            outcome(-0.1, 0.0, 5.0, 0.0),
            outcome(-1.6, 0.0, 1.5, 0.2),
            outcome(-1.2, 0.0, 1.5, 0.4),
        ];
        let chosen = choose_outcome(tries, false, &options);
        assert!((chosen.generated.avg_logprob + 1.2).abs() < 1e-6);
        assert!((chosen.temperature - 0.4).abs() < 1e-6);
    }

    #[test]
    fn the_held_end_is_a_timestamp_of_the_current_window() {
        assert_eq!(timestamp_ahead(25.5, 0.0, TB), Some(TB + 1275));
        assert_eq!(timestamp_ahead(25.5, 20.0, TB), Some(TB + 275));
        assert_eq!(timestamp_ahead(25.5, 25.5, TB), None);
        assert_eq!(timestamp_ahead(25.5, 27.0, TB), None);
    }

    #[test]
    fn rounds_rotate_over_active_streams() {
        let stream = |seek, frames| Stream {
            features: Array2::zeros((80, frames + 1)),
            content_frames: frames,
            duration: 0.0,
            seek,
            all_tokens: vec![],
            prompt_reset_since: 0,
            segments: vec![],
            segment_tokens: vec![],
            speech_until: None,
        };
        let streams = vec![
            stream(0, 100),
            stream(100, 100),
            stream(0, 100),
            stream(0, 100),
        ];
        let mut next = 0;
        assert_eq!(next_round(&streams, &mut next, 2), vec![0, 2]);
        assert_eq!(next_round(&streams, &mut next, 2), vec![3, 0]);
    }

    #[test]
    fn without_fallback_keeps_only_the_first_temperature() {
        let options = TranscribeOptions {
            beam_size: 3,
            ..TranscribeOptions::default()
        }
        .without_fallback();
        assert_eq!(options.temperatures, [0.0]);
        assert_eq!(options.beam_size, 3, "the rest is left as it was");
        assert!(options.validate().is_ok());
    }

    #[test]
    fn options_validate() {
        assert!(TranscribeOptions::default().validate().is_ok());
        let bad = TranscribeOptions {
            beam_size: 0,
            ..TranscribeOptions::default()
        };
        assert!(bad.validate().is_err());
    }
}

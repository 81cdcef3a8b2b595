//! Token generation for a batch of windows: greedy, beam search or sampling.
//!
//! One call decodes many windows (from different files) together: every
//! decoder run serves all of their hypotheses, and finished rows leave the
//! batch so that no work is spent on them.

pub mod rules;

use crate::model::{
    BatchKv, CrossAttention, DecoderInputs, SelfAttentionCache, WhisperModel, MASKED,
};
use crate::WhisperError;
use ndarray::{Array2, Axis};
use rules::{log_softmax, token_probability, LogitRules};
use std::collections::HashSet;
use std::ops::Range;

/// Prompt tokens (all rows together) one decoder call reads at most.
///
/// Set when the decoder's cross-attention held `rows x heads x width x 1500`
/// scores (and its softmax as many again): 65 MB each for 8 prompts with
/// previous text (225 tokens), the highest point of a worker's memory on a
/// long recording. The fused cross-attention of layout v4 holds no scores,
/// so the slices now bound only the prompts' other activations (a few MB);
/// whether to drop them has not been measured. The prompts' matrix products
/// stay hundreds of rows tall.
const PROMPT_TOKENS: usize = 512;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// The most likely token at every step.
    Greedy,
    /// Beam search keeping `size` hypotheses; stops after `size × patience` finish.
    Beam { size: usize, patience: f32 },
    /// `count` samples at `temperature`; the best by mean log-probability wins.
    /// Every request draws from its own generator seeded with `seed`, so a
    /// window's samples do not depend on the other windows of its batch.
    Sample {
        temperature: f32,
        count: usize,
        seed: u64,
    },
}

impl Strategy {
    fn hypotheses(&self) -> usize {
        match self {
            Self::Greedy => 1,
            Self::Beam { size, .. } => (*size).max(1),
            Self::Sample { count, .. } => (*count).max(1),
        }
    }
}

/// One window to decode: its row in the encoded batch and its prompt.
#[derive(Debug, Clone)]
pub struct Request {
    /// Row of the window in the `CrossAttention` batch.
    pub window: usize,
    /// Prompt tokens: optional previous text, the start-of-transcript sequence, options.
    pub prompt: Vec<u32>,
    /// Index of `<|startoftranscript|>` in `prompt` (no-speech is read there).
    pub sot_index: usize,
    /// A timestamp token the decoding must reach before it may end: the
    /// caller knows speech lies up to there (a packed window's last input),
    /// where Whisper would sometimes stop at a pause and leave the rest to a
    /// further window.
    pub end_not_before: Option<u32>,
    /// The most tokens this window may generate, below the call's limit
    /// (see `transcribe::token_budget`); `None`: only the call's limit.
    pub max_new_tokens: Option<usize>,
}

impl Request {
    /// Window `window` decoded as Whisper starts a recording: the prompt is
    /// `<|startoftranscript|>` alone, with no end to reach and no budget of its own.
    pub fn from_start(window: usize, spec: &crate::model::ModelSpec) -> Self {
        Self {
            window,
            prompt: vec![spec.sot],
            sot_index: 0,
            end_not_before: None,
            max_new_tokens: None,
        }
    }
}

/// The decoded tokens of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated tokens, without the final end-of-text.
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the tokens, end-of-text included.
    pub sum_logprob: f64,
    /// `sum_logprob / (tokens + 1)`, as Whisper reports it.
    pub avg_logprob: f32,
    /// Probability of `<|nospeech|>` right after `<|startoftranscript|>`.
    pub no_speech_prob: f32,
    /// The decoding ran into its window's own token budget
    /// ([`Request::max_new_tokens`], below the call's limit) without ending.
    pub cut_at_budget: bool,
}

/// A partial or finished hypothesis.
#[derive(Debug, Clone)]
struct Hypothesis {
    request: usize,
    tokens: Vec<u32>,
    sum_logprob: f64,
    finished: bool,
}

impl Hypothesis {
    /// Length-normalised score used to rank finished hypotheses.
    fn score(&self) -> f64 {
        self.sum_logprob / self.tokens.len().max(1) as f64
    }

    /// `budget`: the request's own token budget where it is below the call's limit.
    fn into_generated(self, no_speech_prob: f32, budget: Option<usize>) -> Generated {
        let avg_logprob = (self.sum_logprob / (self.tokens.len() + 1) as f64) as f32;
        // A hypothesis is finished at the limit as soon as it reaches it, so one
        // that ended with end-of-text has fewer tokens.
        let cut_at_budget = budget.is_some_and(|budget| self.tokens.len() >= budget);
        Generated {
            tokens: self.tokens,
            sum_logprob: self.sum_logprob,
            avg_logprob,
            no_speech_prob,
            cut_at_budget,
        }
    }
}

/// Decoder state for the rows currently in the batch.
///
/// The decoder reads each window's cross-attention K/V once for all of the
/// window's rows (samples, beams), when the rows come in equal runs, one run
/// per window, in the order of the cross-attention batch it is given (see
/// `docs/model-format.md`). Rows keeps that layout whenever it can, by
/// arranging the windows in place; rows that do not form such runs get a copy
/// of their window's K/V each.
///
/// The decoder never runs a single row: ONNX Runtime's matrix products take
/// another code path for one row (MLAS's one-row kernels), whose rounding
/// differs from the batched path, so a recording decoded alone would get
/// other logits than the same recording in a batch (and, at a near tie or a
/// fallback draw, other words). A lone row therefore runs beside a ballast
/// row, a copy of itself reading another window of the batch (or a copy of
/// its own), whose outputs are dropped: every row is computed the same way
/// whatever its company.
///
/// Rows whose prompts differ in length are left-padded, and where a row's
/// keys sit in the cache changes how ONNX Runtime's reductions round its
/// attention. So prompts with previous text are laid out at one fixed length
/// (see [`prompt_layout`]) whatever the batch, padding masked; prompts
/// without previous text are all alike and need none.
#[derive(Debug)]
struct Rows<'a> {
    cache: SelfAttentionCache,
    /// The caller's encoded windows, arranged for the current rows.
    source: &'a mut CrossAttention,
    /// One copy of K/V per row (with each row's window), when the rows do not
    /// form runs of distinct windows.
    copied: Option<(Vec<usize>, CrossAttention)>,
    /// Left-padding slots at the start of each row's cache.
    padding: Vec<usize>,
    /// Cache length (equal for every row, padding included).
    past: usize,
    /// Length the first call lays the prompts out at (masked zeros before
    /// them), if fixed.
    prompt_layout: Option<usize>,
    /// Whether the prompts were fed.
    prompted: bool,
    /// Window row in `source` of each current row.
    windows: Vec<usize>,
    /// The decoder runs one more row than `windows`: the ballast, a copy of
    /// the only row (see above). Cache and padding hold it as their last row.
    ballast: bool,
}

/// The decoder rows that hold the live rows `indices`: a lone row is doubled.
fn decoder_rows(indices: &[usize]) -> Vec<usize> {
    match indices {
        [only] => vec![*only, *only],
        _ => indices.to_vec(),
    }
}

/// A decoder call's new tokens, their positions and the attention mask.
struct NewTokens {
    tokens: Array2<i64>,
    positions: Array2<i64>,
    attention_mask: Array2<f32>,
}

/// `0..rows` in consecutive ranges of `per_slice` rows (at least 2), the last
/// one taking a single leftover row.
fn row_slices(rows: usize, per_slice: usize) -> Vec<Range<usize>> {
    let per_slice = per_slice.max(2);
    let mut slices: Vec<Range<usize>> = (0..rows)
        .step_by(per_slice)
        .map(|start| start..(start + per_slice).min(rows))
        .collect();
    if slices.len() > 1 && slices.last().is_some_and(|last| last.len() == 1) {
        if let Some(last) = slices.pop() {
            if let Some(previous) = slices.last_mut() {
                previous.end = last.end;
            }
        }
    }
    slices
}

/// The windows, in order, when `rows` (each row's window) are equal runs of
/// distinct windows; `None` otherwise.
fn window_groups(rows: &[usize]) -> Option<Vec<usize>> {
    let first = *rows.first()?;
    let group = rows.iter().take_while(|&&w| w == first).count();
    if rows.len() % group != 0 {
        return None;
    }
    let windows: Vec<usize> = rows.chunks(group).map(|run| run[0]).collect();
    let uniform = rows
        .chunks(group)
        .all(|run| run.iter().all(|&w| w == run[0]));
    let distinct = windows.iter().collect::<HashSet<_>>().len() == windows.len();
    (uniform && distinct).then_some(windows)
}

impl<'a> Rows<'a> {
    fn new(
        model: &WhisperModel,
        source: &'a mut CrossAttention,
        windows: Vec<usize>,
    ) -> Result<Self, WhisperError> {
        let spec = model.spec();
        let decoder_rows = decoder_rows(&windows).len();
        let mut rows = Self {
            cache: SelfAttentionCache::empty(spec, decoder_rows)?,
            source,
            copied: None,
            padding: vec![0; decoder_rows],
            past: 0,
            prompt_layout: None,
            prompted: false,
            windows: Vec::new(),
            ballast: false,
        };
        rows.use_windows(windows)?;
        Ok(rows)
    }

    /// Points the rows at `windows` (one per row) and arranges their K/V.
    fn use_windows(&mut self, windows: Vec<usize>) -> Result<(), WhisperError> {
        self.ballast = windows.len() == 1;
        // A lone row and its ballast read two windows, one row each, as rows
        // of distinct windows do in a batch: the ballast, whose outputs are
        // dropped, reads another window of the batch in place, or, when the
        // batch has no other, a copy of the lone row's.
        let groups = if self.ballast {
            let partner = self.source.held().iter().find(|&&w| w != windows[0]);
            partner.map(|&other| vec![windows[0], other])
        } else {
            window_groups(&windows)
        };
        match groups {
            Some(groups) => {
                self.copied = None;
                self.source.arrange(&groups)?;
            }
            None => {
                let wanted = decoder_rows(&windows);
                let current = self.copied.as_ref().map(|(rows, _)| rows);
                if current != Some(&wanted) {
                    let copy = self.source.select_rows(&wanted)?;
                    self.copied = Some((wanted, copy));
                }
            }
        }
        self.windows = windows;
        Ok(())
    }

    fn len(&self) -> usize {
        self.windows.len()
    }

    /// Feeds one token sequence per row (left-padded to equal length); returns
    /// the last logits of each row.
    fn feed(
        &mut self,
        model: &mut WhisperModel,
        sequences: &[&[u32]],
        pad_token: u32,
    ) -> Result<Array2<f32>, WhisperError> {
        let live = sequences.len();
        let mut sequences = sequences.to_vec();
        if self.ballast {
            sequences.extend(sequences.first().copied());
        }
        let rows = sequences.len();
        let width = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        if !self.prompted {
            self.lead_to_layout(model, width)?;
        }
        let mut tokens = Array2::<i64>::from_elem((rows, width), i64::from(pad_token));
        let mut positions = Array2::<i64>::zeros((rows, width));
        let mut new_padding = Vec::with_capacity(rows);
        for (row, sequence) in sequences.iter().enumerate() {
            let pad = width - sequence.len();
            // Position of a row's next token = tokens it already holds.
            let first_position = (self.past - self.padding[row]) as i64;
            for (offset, &token) in sequence.iter().enumerate() {
                tokens[[row, pad + offset]] = i64::from(token);
                positions[[row, pad + offset]] = first_position + offset as i64;
            }
            new_padding.push(pad);
        }
        let total = self.past + width;
        let mut attention_mask = Array2::<f32>::zeros((rows, total));
        for row in 0..rows {
            let masked = (0..self.padding[row]).chain(self.past..self.past + new_padding[row]);
            for slot in masked {
                attention_mask[[row, slot]] = MASKED;
            }
        }
        let new = NewTokens {
            tokens,
            positions,
            attention_mask,
        };
        let logits = match self.prompt_slices(rows, width) {
            Some(slices) => self.feed_in_slices(model, &new, &slices)?,
            None => {
                // The K/V the decoder reads for the current rows (the
                // fields are borrowed apart: the cache is written meanwhile).
                let cross = match &self.copied {
                    Some((_, copy)) => copy,
                    None => &*self.source,
                };
                model.decode(DecoderInputs {
                    tokens: new.tokens,
                    positions: new.positions,
                    attention_mask: new.attention_mask,
                    cache: &mut self.cache,
                    cross,
                })?
            }
        };
        // Padding inside the new tokens only happens on the first (prompt) call.
        if !self.prompted {
            for (padding, new) in self.padding.iter_mut().zip(new_padding) {
                *padding += new;
            }
            self.prompted = true;
        } else if new_padding.iter().any(|&p| p > 0) {
            return Err(WhisperError::InvalidOption {
                reason: "only the first decoder call may hold sequences of different lengths"
                    .into(),
            });
        }
        self.past = total;
        Ok(if rows > live {
            logits.select(Axis(0), &(0..live).collect::<Vec<_>>())
        } else {
            logits
        })
    }

    /// The row ranges to feed a first call of `rows` prompts of `width`
    /// tokens in, when it is too wide for one call (see [`PROMPT_TOKENS`]).
    ///
    /// Only rows that read their own window each, in order, are split: then
    /// the rows of a slice read the slice's positions of the K/V. A slice
    /// never holds a single row (see [`Rows`]).
    fn prompt_slices(&self, rows: usize, width: usize) -> Option<Vec<Range<usize>>> {
        let own_windows = self.copied.is_none() && !self.ballast && self.source.active() == rows;
        let per_slice = (PROMPT_TOKENS / width.max(1)).max(2);
        if self.prompted || !own_windows || rows <= per_slice {
            return None;
        }
        Some(row_slices(rows, per_slice))
    }

    /// One decoder call per slice of rows, each reading its slice's windows;
    /// the logits and caches are put together as one call's would be.
    ///
    /// Each slice decodes into its own copy of its rows of the cache: the
    /// first slice's call grows the cache, and the others must read it as it
    /// was (see [`SelfAttentionCache`]). Only one slice's copy exists beside
    /// the whole.
    fn feed_in_slices(
        &mut self,
        model: &mut WhisperModel,
        new: &NewTokens,
        slices: &[Range<usize>],
    ) -> Result<Array2<f32>, WhisperError> {
        let mut logits = Vec::with_capacity(slices.len());
        let mut whole = BatchKv::new(self.cache.rows());
        for slice in slices {
            let indices: Vec<usize> = slice.clone().collect();
            let mut part = self.cache.select_rows(&indices)?;
            self.source.read_only(Some(slice.clone()))?;
            let decoded = model.decode(DecoderInputs {
                tokens: new.tokens.select(Axis(0), &indices),
                positions: new.positions.select(Axis(0), &indices),
                attention_mask: new.attention_mask.select(Axis(0), &indices),
                cache: &mut part,
                cross: self.source,
            });
            self.source.read_only(None)?;
            logits.push(decoded?);
            let (keys, values) = part.views();
            whole.fill(slice.start, &keys, &values)?;
        }
        self.cache = SelfAttentionCache::from_batch(whole);
        let views: Vec<_> = logits.iter().map(|part| part.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|err| WhisperError::Inference {
            reason: format!("logits of a sliced prompt do not stack: {err}"),
        })
    }

    /// Before the prompts of `width` tokens: masked zero keys and values up
    /// to the fixed prompt layout, if one is set.
    fn lead_to_layout(&mut self, model: &WhisperModel, width: usize) -> Result<(), WhisperError> {
        let Some(layout) = self.prompt_layout else {
            return Ok(());
        };
        let lead = layout.saturating_sub(width);
        if lead > 0 {
            self.cache = SelfAttentionCache::zeros(model.spec(), self.padding.len(), lead)?;
            self.padding = vec![lead; self.padding.len()];
            self.past = lead;
        }
        Ok(())
    }

    /// Keeps rows `indices` (in that order, repeats allowed).
    fn select(&mut self, indices: &[usize]) -> Result<(), WhisperError> {
        if indices.len() == self.len() && indices.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        // Live row r is decoder row r (a ballast comes last).
        let kept = decoder_rows(indices);
        self.cache = self.cache.select_rows(&kept)?;
        self.padding = kept.iter().map(|&r| self.padding[r]).collect();
        let windows: Vec<usize> = indices.iter().map(|&r| self.windows[r]).collect();
        self.use_windows(windows)
    }
}

/// The length every prompt with previous text is laid out at: the longest
/// such prompt up to `<|startoftranscript|>` (Whisper keeps half the text
/// context of previous text, after `<|startofprev|>`).
pub fn prompt_layout(spec: &crate::model::ModelSpec) -> usize {
    spec.n_text_ctx / 2 + 1
}

/// Decodes `requests` against the encoded windows `cross`.
///
/// Requests either all have previous text in their prompts or none has (see
/// [`Rows`]): the caller batches the two kinds apart.
///
/// Each request generates at most `max_new_tokens`, and never past the text
/// context after its own prompt: a request's limit is its own, not the
/// batch's, so its tokens do not depend on the other windows of the batch.
pub fn generate(
    model: &mut WhisperModel,
    cross: &mut CrossAttention,
    requests: &[Request],
    rules: &LogitRules,
    strategy: &Strategy,
    max_new_tokens: usize,
) -> Result<Vec<Generated>, WhisperError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let spec = model.spec().clone();
    let conditioned = requests[0].sot_index > 0;
    if requests.iter().any(|r| (r.sot_index > 0) != conditioned) {
        return Err(WhisperError::InvalidOption {
            reason: "windows with and without previous text are decoded apart".into(),
        });
    }
    let mut rows = Rows::new(model, cross, requests.iter().map(|r| r.window).collect())?;
    if conditioned {
        rows.prompt_layout = Some(prompt_layout(&spec));
    }

    // The prompt up to <|startoftranscript|> gives the no-speech probability.
    let heads: Vec<&[u32]> = requests
        .iter()
        .map(|r| &r.prompt[..=r.sot_index.min(r.prompt.len().saturating_sub(1))])
        .collect();
    let mut logits = rows.feed(model, &heads, spec.eot)?;
    let no_speech: Vec<f32> = logits
        .rows()
        .into_iter()
        .map(|row| token_probability(row.as_slice().unwrap_or(&[]), spec.no_speech))
        .collect();
    let tails: Vec<&[u32]> = requests
        .iter()
        .map(|r| r.prompt.get(r.sot_index + 1..).unwrap_or(&[]))
        .collect();
    if tails.iter().any(|t| t.len() != tails[0].len()) {
        return Err(WhisperError::InvalidOption {
            reason: "all windows of a batch need the same options after <|startoftranscript|>"
                .into(),
        });
    }
    if !tails[0].is_empty() {
        logits = rows.feed(model, &tails, spec.eot)?;
    }

    // One row per hypothesis.
    let per_request = strategy.hypotheses();
    let expand: Vec<usize> = (0..requests.len())
        .flat_map(|r| std::iter::repeat_n(r, per_request))
        .collect();
    rows.select(&expand)?;
    let logits = logits.select(Axis(0), &expand);
    let hypotheses: Vec<Hypothesis> = expand
        .iter()
        .map(|&request| Hypothesis {
            request,
            tokens: Vec::new(),
            sum_logprob: 0.0,
            finished: false,
        })
        .collect();

    let call_limits: Vec<usize> = requests
        .iter()
        .map(|r| max_new_tokens.min(spec.n_text_ctx.saturating_sub(r.prompt.len())))
        .collect();
    let own_budgets: Vec<Option<usize>> = requests
        .iter()
        .zip(&call_limits)
        .map(|(r, &limit)| r.max_new_tokens.filter(|&budget| budget < limit))
        .collect();
    let search = Search {
        model,
        rules,
        end_not_before: requests.iter().map(|r| r.end_not_before).collect(),
        eot: spec.eot,
        max_new_tokens: call_limits
            .iter()
            .zip(&own_budgets)
            .map(|(&limit, budget)| budget.unwrap_or(limit))
            .collect(),
    };
    let finished = match strategy {
        Strategy::Greedy => search.independent(rows, hypotheses, logits, None)?,
        Strategy::Sample {
            temperature, seed, ..
        } => {
            let generators = requests.iter().map(|_| Rng::new(*seed)).collect();
            search.independent(rows, hypotheses, logits, Some((*temperature, generators)))?
        }
        Strategy::Beam { size, patience } => {
            search.beam(rows, hypotheses, logits, (*size).max(1), *patience)?
        }
    };
    Ok(best_per_request(finished, requests.len())
        .into_iter()
        .zip(no_speech)
        .zip(own_budgets)
        .map(|((hypothesis, no_speech_prob), budget)| {
            hypothesis.into_generated(no_speech_prob, budget)
        })
        .collect())
}

/// The highest-scoring hypothesis of each request.
fn best_per_request(hypotheses: Vec<Hypothesis>, requests: usize) -> Vec<Hypothesis> {
    let mut best: Vec<Option<Hypothesis>> = vec![None; requests];
    for hypothesis in hypotheses {
        let slot = &mut best[hypothesis.request];
        if slot.as_ref().is_none_or(|b| hypothesis.score() > b.score()) {
            *slot = Some(hypothesis);
        }
    }
    best.into_iter()
        .enumerate()
        .map(|(request, h)| {
            h.unwrap_or(Hypothesis {
                request,
                tokens: Vec::new(),
                sum_logprob: 0.0,
                finished: true,
            })
        })
        .collect()
}

/// The decoding loop's fixed parts.
struct Search<'m> {
    model: &'m mut WhisperModel,
    rules: &'m LogitRules,
    /// Per request: see [`Request::end_not_before`].
    end_not_before: Vec<Option<u32>>,
    eot: u32,
    /// Per request: how many tokens it may generate.
    max_new_tokens: Vec<usize>,
}

impl Search<'_> {
    /// The most steps any request may take.
    fn steps(&self) -> usize {
        self.max_new_tokens.iter().copied().max().unwrap_or(0)
    }

    /// Whether a hypothesis has used all the tokens its request may generate.
    fn at_limit(&self, hypothesis: &Hypothesis) -> bool {
        hypothesis.tokens.len() >= self.max_new_tokens[hypothesis.request]
    }

    /// Whisper's rules and the request's hold on the end, applied to one row.
    fn masked_logits(
        &self,
        logits: ndarray::ArrayView1<'_, f32>,
        hypothesis: &Hypothesis,
    ) -> Vec<f32> {
        let mut row = logits.to_vec();
        self.rules.apply(&mut row, &hypothesis.tokens);
        let hold = self
            .end_not_before
            .get(hypothesis.request)
            .copied()
            .flatten();
        self.rules.hold_end(&mut row, &hypothesis.tokens, hold);
        row
    }

    /// Greedy or sampled decoding: every row evolves on its own.
    fn independent(
        self,
        mut rows: Rows<'_>,
        mut hypotheses: Vec<Hypothesis>,
        mut logits: Array2<f32>,
        mut sampling: Option<(f32, Vec<Rng>)>,
    ) -> Result<Vec<Hypothesis>, WhisperError> {
        let mut done = Vec::with_capacity(hypotheses.len());
        let mut scratch = Vec::new();
        for _ in 0..self.steps() {
            for (row, hypothesis) in hypotheses.iter_mut().enumerate() {
                if hypothesis.finished {
                    continue;
                }
                let row_logits = self.masked_logits(logits.row(row), hypothesis);
                let token = match sampling.as_mut() {
                    None => argmax(&row_logits),
                    Some((temperature, generators)) => sample(
                        &row_logits,
                        *temperature,
                        &mut generators[hypothesis.request],
                        &mut scratch,
                    ),
                };
                log_softmax(&row_logits, &mut scratch);
                hypothesis.sum_logprob += f64::from(scratch[token as usize]);
                if token == self.eot {
                    hypothesis.finished = true;
                } else {
                    hypothesis.tokens.push(token);
                    // Cut at its request's limit, as a lone decoding would be.
                    hypothesis.finished = self.at_limit(hypothesis);
                }
            }
            // A request's rows leave the batch once all of them finished, so no
            // decoder work is spent on finished requests, while the samples of
            // one window stay together and share its cross-attention K/V (a
            // finished sample waits, fed end-of-text, for its siblings).
            let mut open_requests = HashSet::new();
            for hypothesis in hypotheses.iter().filter(|h| !h.finished) {
                open_requests.insert(hypothesis.request);
            }
            let keep: Vec<usize> = (0..hypotheses.len())
                .filter(|&row| open_requests.contains(&hypotheses[row].request))
                .collect();
            if keep.len() < hypotheses.len() {
                let mut remaining = Vec::with_capacity(keep.len());
                for hypothesis in hypotheses.drain(..) {
                    if open_requests.contains(&hypothesis.request) {
                        remaining.push(hypothesis);
                    } else {
                        done.push(hypothesis);
                    }
                }
                hypotheses = remaining;
                if hypotheses.is_empty() {
                    break;
                }
                rows.select(&keep)?;
            }
            let next: Vec<[u32; 1]> = hypotheses
                .iter()
                .map(|h| {
                    let last = h.tokens.last().copied().unwrap_or(self.eot);
                    [if h.finished { self.eot } else { last }]
                })
                .collect();
            let next: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            logits = rows.feed(self.model, &next, self.eot)?;
        }
        done.extend(hypotheses);
        Ok(done)
    }

    /// Beam search over each request's `size` beams.
    fn beam(
        self,
        mut rows: Rows<'_>,
        mut beams: Vec<Hypothesis>,
        mut logits: Array2<f32>,
        size: usize,
        patience: f32,
    ) -> Result<Vec<Hypothesis>, WhisperError> {
        let max_finished = ((size as f32 * patience).round() as usize).max(1);
        let requests = beams.iter().map(|b| b.request).max().map_or(0, |m| m + 1);
        let mut finished: Vec<Vec<Hypothesis>> = vec![Vec::new(); requests];
        let mut scratch = Vec::new();
        // Live beams of requests that reached their token limit.
        let mut exhausted = Vec::new();
        for _ in 0..self.steps() {
            // Candidates per request: (score, source row, token).
            let mut candidates: Vec<Vec<(f64, usize, u32)>> = vec![Vec::new(); requests];
            for (row, beam) in beams.iter().enumerate() {
                let row_logits = self.masked_logits(logits.row(row), beam);
                log_softmax(&row_logits, &mut scratch);
                for token in top_k(&scratch, size + 1) {
                    let score = beam.sum_logprob + f64::from(scratch[token as usize]);
                    candidates[beam.request].push((score, row, token));
                }
            }
            let mut next_beams = Vec::with_capacity(beams.len());
            let mut sources = Vec::with_capacity(beams.len());
            for (request, mut options) in candidates.into_iter().enumerate() {
                if options.is_empty() {
                    continue;
                }
                options.sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut seen = HashSet::new();
                let mut kept = 0;
                for (score, row, token) in options {
                    let mut tokens = beams[row].tokens.clone();
                    let is_end = token == self.eot;
                    if !is_end {
                        tokens.push(token);
                    }
                    if !seen.insert((tokens.clone(), is_end)) {
                        continue;
                    }
                    let hypothesis = Hypothesis {
                        request,
                        tokens,
                        sum_logprob: score,
                        finished: is_end,
                    };
                    if is_end {
                        if finished[request].len() < max_finished {
                            finished[request].push(hypothesis);
                        }
                    } else {
                        next_beams.push(hypothesis);
                        sources.push(row);
                        kept += 1;
                        if kept == size {
                            break;
                        }
                    }
                }
            }
            // Requests with enough finished hypotheses stop searching.
            // Requests at their token limit stop too, keeping their live beams.
            let mut keep = Vec::with_capacity(next_beams.len());
            for (i, beam) in next_beams.iter().enumerate() {
                if finished[beam.request].len() >= max_finished {
                    continue;
                }
                if self.at_limit(beam) {
                    exhausted.push(beam.clone());
                } else {
                    keep.push(i);
                }
            }
            beams = keep.iter().map(|&i| next_beams[i].clone()).collect();
            let sources: Vec<usize> = keep.iter().map(|&i| sources[i]).collect();
            if beams.is_empty() {
                break;
            }
            rows.select(&sources)?;
            let next: Vec<[u32; 1]> = beams
                .iter()
                .map(|b| [b.tokens.last().copied().unwrap_or(self.eot)])
                .collect();
            let next: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            logits = rows.feed(self.model, &next, self.eot)?;
        }
        // Requests that never finished keep their live beams as candidates.
        for beam in exhausted.into_iter().chain(beams) {
            if finished[beam.request].is_empty() {
                finished[beam.request].push(beam);
            }
        }
        Ok(finished.into_iter().flatten().collect())
    }
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (index, &value) in values.iter().enumerate() {
        if value > values[best] {
            best = index;
        }
    }
    best as u32
}

/// Indices of the `k` largest values, largest first.
fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    let mut best: Vec<u32> = Vec::with_capacity(k + 1);
    for (index, &value) in values.iter().enumerate() {
        if value == f32::NEG_INFINITY {
            continue;
        }
        if best.len() == k && value <= values[best[k - 1] as usize] {
            continue;
        }
        let at = best
            .iter()
            .position(|&b| value > values[b as usize])
            .unwrap_or(best.len());
        best.insert(at, index as u32);
        best.truncate(k);
    }
    best
}

/// Draws a token from softmax(logits / temperature).
fn sample(logits: &[f32], temperature: f32, rng: &mut Rng, scratch: &mut Vec<f32>) -> u32 {
    let scaled: Vec<f32> = logits.iter().map(|&x| x / temperature.max(1e-6)).collect();
    log_softmax(&scaled, scratch);
    let mut threshold = rng.next_f64();
    for (index, &log_p) in scratch.iter().enumerate() {
        threshold -= f64::from(log_p.exp());
        if threshold <= 0.0 {
            return index as u32;
        }
    }
    argmax(logits)
}

/// A small deterministic generator (xorshift64*): sampling must be reproducible
/// for a given seed, and needs nothing stronger.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_slices_cover_every_row_and_never_leave_one_alone() {
        assert_eq!(row_slices(8, 2), [0..2, 2..4, 4..6, 6..8]);
        assert_eq!(row_slices(7, 2), [0..2, 2..4, 4..7]);
        assert_eq!(row_slices(7, 3), [0..3, 3..7]);
        assert_eq!(row_slices(5, 1), [0..2, 2..5]);
        assert_eq!(row_slices(1, 2), vec![0..1]);
    }

    #[test]
    fn rows_in_equal_runs_of_distinct_windows_share_them() {
        assert_eq!(window_groups(&[4, 4, 4, 7, 7, 7]), Some(vec![4, 7]));
        assert_eq!(window_groups(&[0, 1, 2]), Some(vec![0, 1, 2]));
        assert_eq!(window_groups(&[3]), Some(vec![3]));
        // Unequal runs, a window in two runs, or nothing: one copy per row.
        assert_eq!(window_groups(&[4, 4, 7]), None);
        assert_eq!(window_groups(&[4, 4, 7, 7, 7, 7]), None);
        assert_eq!(window_groups(&[4, 7, 4]), None);
        assert_eq!(window_groups(&[4, 4, 7, 7, 4, 4]), None);
        assert_eq!(window_groups(&[]), None);
    }

    #[test]
    fn top_k_orders_and_skips_masked() {
        let values = [0.1, f32::NEG_INFINITY, 3.0, 2.0, -1.0];
        assert_eq!(top_k(&values, 2), vec![2, 3]);
        assert_eq!(top_k(&values, 10), vec![2, 3, 0, 4]);
    }

    #[test]
    fn argmax_picks_first_maximum() {
        assert_eq!(argmax(&[1.0, 5.0, 5.0, 0.0]), 1);
    }

    #[test]
    fn sampling_at_low_temperature_is_greedy_and_reproducible() {
        let logits = [0.0, 4.0, 1.0];
        let mut scratch = Vec::new();
        let mut rng = Rng::new(7);
        for _ in 0..20 {
            assert_eq!(sample(&logits, 0.01, &mut rng, &mut scratch), 1);
        }
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| sample(&[0.0, 0.0, 0.0], 1.0, &mut rng, &mut Vec::new()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let counts = draw(3).iter().fold([0; 3], |mut c, &t| {
            c[t as usize] += 1;
            c
        });
        assert!(counts.iter().all(|&c| c > 5), "{counts:?}");
    }

    #[test]
    fn a_hypothesis_at_its_own_budget_was_cut() {
        let hypothesis = Hypothesis {
            request: 0,
            tokens: vec![1, 2, 3, 4],
            sum_logprob: -1.0,
            finished: true,
        };
        let cut = |budget| hypothesis.clone().into_generated(0.0, budget).cut_at_budget;
        assert!(cut(Some(4)));
        // Ended with end-of-text before its budget, or bound by the call's limit only.
        assert!(!cut(Some(5)));
        assert!(!cut(None));
    }

    #[test]
    fn best_hypothesis_is_length_normalised() {
        let short = Hypothesis {
            request: 0,
            tokens: vec![1],
            sum_logprob: -1.0,
            finished: true,
        };
        let long = Hypothesis {
            request: 0,
            tokens: vec![1, 2, 3, 4],
            sum_logprob: -2.0,
            finished: true,
        };
        let best = best_per_request(vec![short, long.clone()], 1);
        assert_eq!(best[0].tokens, long.tokens);
    }
}

//! `mmt transcribe`: decode files, transcribe them in batches, print transcripts.
//!
//! Each file is decoded as a stream into a spool (see `mmt_operators::samples`);
//! a recording longer than `MMT_MAX_AUDIO_SECONDS` is an error for that file
//! (the others are still transcribed), found from its header or as soon as
//! decoding passes the limit.

use crate::cli::TranscribeArgs;
use anyhow::Result;
use mmt_core::transcript::{Transcript, TranscriptFormat};
use mmt_operators::chunk::{ChunkConfig, SpeechAnalyzer};
use mmt_operators::decode::MAX_AUDIO_SECONDS_VARIABLE;
use mmt_operators::records::{DecodedAudio, Samples};
use mmt_operators::samples::SamplesWriter;
use mmt_pipeline::config::Config;
use mmt_whisper::{audio, Engine, ModelOptions, TranscribeOptions, WhisperError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Files transcribed together at most.
const FILES_PER_CHUNK: usize = 64;

/// Audio read into memory for one batch of files at most (115 MB as `f32`).
const BATCH_AUDIO_SECONDS: f64 = 30.0 * 60.0;

/// A file up to this long is decoded long-form as one input (Whisper's own
/// 30 s windows, moved by its timestamps). A longer one is transcribed chunk
/// by chunk from its spool, as `mmt run` does, so that it never has to fit
/// in memory: 3.5 h would be 800 MB of samples.
const LONG_FORM_MAX_SECONDS: f64 = 30.0 * 60.0;

/// Reads the configuration, refusing to start on fatal problems.
/// The configuration from the environment, with the database and broker
/// credentials held in Vault put in (`MMT_VAULT_*_SECRET_PATH`).
pub fn load_config() -> Result<Config> {
    let config = Config::from_env().map_err(|err| anyhow::anyhow!("{}", err.report()))?;
    Ok(config.with_vault_credentials()?)
}

/// Model location and threading from the configuration and an optional override.
pub fn model_options(config: &Config, threads: Option<usize>) -> ModelOptions {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let configured = config.model.intra_op_threads.map(|n| n as usize);
    ModelOptions {
        model_dir: config.model.model_dir.clone(),
        ort_library: config.model.ort_library.clone(),
        intra_op_threads: threads.or(configured).unwrap_or(cores).max(1),
    }
}

pub fn run(args: TranscribeArgs) -> Result<ExitCode> {
    let config = load_config()?;
    let options = TranscribeOptions {
        beam_size: args.beam,
        batch_size: args.batch_size,
        without_timestamps: args.without_timestamps,
        packing: args.packing,
        initial_prompt: args.initial_prompt.clone(),
        ..TranscribeOptions::default()
    };
    let options = if args.no_fallback {
        options.without_fallback()
    } else {
        options
    };
    options.validate()?;
    let mut engine = Engine::load(&model_options(&config, args.threads))?;

    let max_seconds = Some(config.audio.max_audio_seconds);
    let mut failures = 0usize;
    let mut stdout = std::io::stdout().lock();
    let several = args.files.len() > 1;
    let mut batch = ShortFiles::default();
    for path in &args.files {
        let audio = match decode(path, max_seconds) {
            Ok(audio) => audio,
            Err(err) => {
                failures += 1;
                let hint = match err {
                    WhisperError::TooLong { .. } => {
                        format!("; set by {MAX_AUDIO_SECONDS_VARIABLE}")
                    }
                    _ => String::new(),
                };
                eprintln!("mmt: error: {}: {err}{hint}", path.display());
                continue;
            }
        };
        let seconds = audio.samples.len() as f64 / f64::from(audio::SAMPLE_RATE);
        if seconds > LONG_FORM_MAX_SECONDS {
            // Files are printed in order: what is batched goes first.
            batch.flush(&mut engine, &options, &mut stdout, args.format, several)?;
            let transcript = transcribe_in_chunks(&mut engine, &options, &audio, seconds)?;
            write_transcript(&mut stdout, path, &transcript, args.format, several)?;
            continue;
        }
        batch.push(path.clone(), audio.samples, seconds);
        if batch.is_full() {
            batch.flush(&mut engine, &options, &mut stdout, args.format, several)?;
        }
    }
    batch.flush(&mut engine, &options, &mut stdout, args.format, several)?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// A file decoded as a stream into a spool (on disk past a megabyte), with
/// its speech chunks planned on the way.
fn decode(path: &Path, max_seconds: Option<u32>) -> Result<DecodedAudio, WhisperError> {
    let chunking = ChunkConfig::default();
    let mut writer = SamplesWriter::new();
    let mut analyzer = SpeechAnalyzer::new(audio::SAMPLE_RATE, &chunking);
    audio::stream_file(path, max_seconds, &mut |block| {
        analyzer.push(block);
        writer.write(block).map_err(|source| WhisperError::Io {
            path: std::env::temp_dir(),
            source,
        })
    })?;
    Ok(DecodedAudio {
        chunks: analyzer.plan(&chunking),
        samples: writer.finish(),
    })
}

/// Short files waiting to be transcribed together, in file order.
#[derive(Default)]
struct ShortFiles {
    files: Vec<(PathBuf, Samples)>,
    seconds: f64,
}

impl ShortFiles {
    fn push(&mut self, path: PathBuf, samples: Samples, seconds: f64) {
        self.files.push((path, samples));
        self.seconds += seconds;
    }

    fn is_full(&self) -> bool {
        self.files.len() >= FILES_PER_CHUNK || self.seconds >= BATCH_AUDIO_SECONDS
    }

    /// Transcribes and prints the waiting files (their audio is read into
    /// memory only now); leaves the batch empty.
    fn flush(
        &mut self,
        engine: &mut Engine,
        options: &TranscribeOptions,
        out: &mut impl std::io::Write,
        format: TranscriptFormat,
        several: bool,
    ) -> Result<()> {
        let files = std::mem::take(&mut self.files);
        self.seconds = 0.0;
        if files.is_empty() {
            return Ok(());
        }
        let loaded = files
            .iter()
            .map(|(_, samples)| samples.read())
            .collect::<std::io::Result<Vec<_>>>()?;
        let inputs: Vec<&[f32]> = loaded.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        let transcripts = engine.transcribe_batch(&inputs, options)?;
        let audio_seconds: f64 = transcripts.iter().map(|t| t.duration_seconds).sum();
        tracing::info!(
            files = transcripts.len(),
            audio_seconds,
            wall_seconds = started.elapsed().as_secs_f64(),
            "transcribed"
        );
        for ((path, _), transcript) in files.iter().zip(transcripts) {
            write_transcript(out, path, &transcript, format, several)?;
        }
        Ok(())
    }
}

/// A long recording transcribed as `mmt run` does it: its speech chunks in
/// order, each read from the spool when its turn comes and prompted with the
/// text before it, so that memory does not grow with the recording's length.
fn transcribe_in_chunks(
    engine: &mut Engine,
    options: &TranscribeOptions,
    audio: &DecodedAudio,
    seconds: f64,
) -> Result<Transcript> {
    let mut context: Vec<u32> = match &options.initial_prompt {
        Some(text) => engine.tokenizer().encode(&format!(" {}", text.trim()))?,
        None => Vec::new(),
    };
    let started = Instant::now();
    let mut segments = Vec::new();
    for chunk in &audio.chunks {
        let samples = audio.samples.slice(chunk.start..chunk.end).read()?;
        let offset = chunk.start as f64 / f64::from(audio::SAMPLE_RATE);
        let continued = engine
            .transcribe_continuing(&[samples.as_slice()], &[context.as_slice()], options)?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no transcript produced"))?;
        context = continued.context;
        segments.extend(
            continued
                .transcript
                .segments
                .into_iter()
                .map(|mut segment| {
                    segment.start = (segment.start + offset).min(seconds);
                    segment.end = (segment.end + offset).min(seconds).max(segment.start);
                    segment
                }),
        );
    }
    tracing::info!(
        chunks = audio.chunks.len(),
        audio_seconds = seconds,
        wall_seconds = started.elapsed().as_secs_f64(),
        "transcribed a long recording in chunks"
    );
    Ok(Transcript::from_segments(segments, seconds, "en"))
}

/// JSON is one object per line naming its file; other formats get a header per
/// file when there are several.
fn write_transcript(
    out: &mut impl std::io::Write,
    path: &Path,
    transcript: &Transcript,
    format: TranscriptFormat,
    several: bool,
) -> Result<()> {
    match format {
        TranscriptFormat::Json => {
            let mut value = serde_json::to_value(transcript)?;
            if let Some(object) = value.as_object_mut() {
                object.insert("file".into(), path.display().to_string().into());
            }
            writeln!(out, "{}", serde_json::to_string(&value)?)?;
        }
        _ => {
            if several {
                writeln!(out, "==> {} <==", path.display())?;
            }
            write!(out, "{}", transcript.render(format))?;
        }
    }
    Ok(())
}

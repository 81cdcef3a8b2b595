//! `mmt transcribe`: decode files, transcribe them in batches, print transcripts.

use crate::cli::TranscribeArgs;
use anyhow::Result;
use mmt_core::transcript::{Transcript, TranscriptFormat};
use mmt_pipeline::config::Config;
use mmt_whisper::{audio, Engine, ModelOptions, TranscribeOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Files decoded and transcribed together; bounds memory for long file lists.
const FILES_PER_CHUNK: usize = 64;

/// Reads the configuration, refusing to start on fatal problems.
pub fn load_config() -> Result<Config> {
    Config::from_env().map_err(|err| anyhow::anyhow!("{}", err.report()))
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

    let mut failures = 0usize;
    let mut stdout = std::io::stdout().lock();
    for chunk in args.files.chunks(FILES_PER_CHUNK) {
        let decoded: Vec<(PathBuf, Result<Vec<f32>, _>)> = chunk
            .iter()
            .map(|path| (path.clone(), audio::decode_file(path)))
            .collect();
        let mut good = Vec::new();
        for (path, result) in decoded {
            match result {
                Ok(samples) => good.push((path, samples)),
                Err(err) => {
                    failures += 1;
                    eprintln!("mmt: error: {}: {err}", path.display());
                }
            }
        }
        let inputs: Vec<&[f32]> = good.iter().map(|(_, samples)| samples.as_slice()).collect();
        let started = Instant::now();
        let transcripts = engine.transcribe_batch(&inputs, &options)?;
        let audio_seconds: f64 = transcripts.iter().map(|t| t.duration_seconds).sum();
        tracing::info!(
            files = transcripts.len(),
            audio_seconds,
            wall_seconds = started.elapsed().as_secs_f64(),
            "transcribed"
        );
        for ((path, _), transcript) in good.iter().zip(transcripts) {
            write_transcript(
                &mut stdout,
                path,
                &transcript,
                args.format,
                args.files.len() > 1,
            )?;
        }
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
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

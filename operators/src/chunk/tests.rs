use super::*;
use std::path::Path;

const SR: u32 = 16_000;

fn secs(s: f64) -> usize {
    (s * f64::from(SR)) as usize
}

/// A deterministic uniform noise source in [-1, 1).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Speech-like sound: a 140 Hz voice with harmonics and breath noise, its
/// loudness modulated at a syllable rate of 4 Hz (about 20 dB between syllables).
fn speechlike(out: &mut Vec<f32>, seconds: f64, noise: &mut Noise) {
    let start = out.len();
    for i in 0..secs(seconds) {
        let t = (start + i) as f32 / SR as f32;
        let envelope = 0.1 + 0.9 * (std::f32::consts::PI * 4.0 * t).sin().abs();
        let voice: f32 = (1..=5)
            .map(|h| (2.0 * std::f32::consts::PI * 140.0 * h as f32 * t).sin() / h as f32)
            .sum();
        out.push(0.15 * envelope * (voice + 0.3 * noise.next()));
    }
}

fn silence(out: &mut Vec<f32>, seconds: f64) {
    out.extend(std::iter::repeat_n(0.0, secs(seconds)));
}

fn white(out: &mut Vec<f32>, seconds: f64, amplitude: f32, noise: &mut Noise) {
    out.extend((0..secs(seconds)).map(|_| amplitude * noise.next()));
}

/// Chunks are numbered from 0, in time order, non-empty, at most 30 s, not overlapping.
fn assert_well_formed(chunks: &[ChunkSpan], total: usize) {
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq as usize, i);
        assert!(chunk.start < chunk.end && chunk.end <= total, "{chunk:?}");
        assert!(chunk.len() <= secs(30.0), "{chunk:?} over 30 s");
    }
    for pair in chunks.windows(2) {
        assert!(pair[0].end <= pair[1].start, "{pair:?} overlap");
    }
}

fn covered(chunks: &[ChunkSpan], start: usize, end: usize) -> usize {
    chunks
        .iter()
        .map(|c| c.end.min(end).saturating_sub(c.start.max(start)))
        .sum()
}

#[test]
fn empty_and_silent_audio_give_no_chunk() {
    let config = ChunkConfig::default();
    assert!(plan_chunks(&[], SR, &config).is_empty());
    assert!(plan_chunks(&vec![0.0; secs(60.0)], SR, &config).is_empty());
    assert!(plan_chunks(&[0.5; 100], 0, &config).is_empty());
}

#[test]
fn steady_noise_gives_no_chunk() {
    let config = ChunkConfig::default();
    let mut noise = Noise(7);
    for amplitude in [0.002, 0.02, 0.1] {
        let mut audio = Vec::new();
        white(&mut audio, 45.0, amplitude, &mut noise);
        assert!(
            plan_chunks(&audio, SR, &config).is_empty(),
            "white noise of amplitude {amplitude} taken for speech"
        );
    }
    // A steady hum is not speech either.
    let hum: Vec<f32> = (0..secs(20.0))
        .map(|i| 0.05 * (2.0 * std::f32::consts::PI * 60.0 * i as f32 / SR as f32).sin())
        .collect();
    assert!(plan_chunks(&hum, SR, &config).is_empty());
}

#[test]
fn bursts_are_covered_and_cut_only_in_pauses() {
    let mut noise = Noise(42);
    let bursts_s = [2.0, 5.0, 8.0, 12.0, 3.0, 20.0, 4.0, 0.6];
    let pauses_s = [0.8, 1.5, 0.6, 4.0, 1.0, 0.7, 2.5];
    let mut audio = Vec::new();
    let mut bursts = Vec::new();
    white(&mut audio, 1.0, 0.001, &mut noise);
    for (i, &burst) in bursts_s.iter().enumerate() {
        let start = audio.len();
        speechlike(&mut audio, burst, &mut noise);
        bursts.push((start, audio.len()));
        if let Some(&pause) = pauses_s.get(i) {
            white(&mut audio, pause, 0.001, &mut noise);
        }
    }
    white(&mut audio, 1.0, 0.001, &mut noise);

    let config = ChunkConfig::default();
    let chunks = plan_chunks(&audio, SR, &config);
    assert_well_formed(&chunks, audio.len());
    // Every burst lies wholly inside one chunk: no cut falls inside speech.
    for &(start, end) in &bursts {
        assert!(
            chunks.iter().any(|c| c.start <= start && end <= c.end),
            "burst {start}..{end} not inside one chunk: {chunks:?}"
        );
    }
    // The 4 s pause is longer than max_gap_in_chunk_ms: it is not sent to the model.
    let long_pause = (bursts[3].1, bursts[4].0);
    let pad = secs(0.2) + 480;
    assert!(covered(&chunks, long_pause.0 + pad, long_pause.1 - pad) == 0);
    // The leading and trailing noise is not sent either, beyond the padding.
    assert!(chunks[0].start + pad >= bursts[0].0);
    assert!(chunks[chunks.len() - 1].end <= bursts[bursts.len() - 1].1 + pad);
    // 55.7 s of audio needs at least two chunks, and packing keeps them few.
    assert!((2..=4).contains(&chunks.len()), "{chunks:?}");
}

#[test]
fn continuous_speech_is_split_near_the_limit() {
    let mut noise = Noise(3);
    let mut audio = Vec::new();
    speechlike(&mut audio, 90.0, &mut noise);
    let chunks = plan_chunks(&audio, SR, &ChunkConfig::default());
    assert_well_formed(&chunks, audio.len());
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert_eq!(covered(&chunks, 0, audio.len()), audio.len());
    // Cuts fall in the search window before the limit, in a quiet frame.
    for chunk in &chunks[..chunks.len() - 1] {
        assert!(chunk.len() >= secs(25.0), "{chunk:?}");
        let frame = (chunk.end / 480) * 480;
        let energy = vad::frame_energies(&audio[frame..frame + 480], 480)[0];
        assert!(energy < -30.0, "cut at a loud frame ({energy} dBFS)");
    }
}

#[test]
fn max_chunk_length_is_configurable_and_capped() {
    let mut noise = Noise(5);
    let mut audio = Vec::new();
    speechlike(&mut audio, 25.0, &mut noise);
    let config = ChunkConfig {
        max_chunk_ms: 10_000,
        split_search_ms: 2_000,
        ..ChunkConfig::default()
    };
    let chunks = plan_chunks(&audio, SR, &config);
    assert_well_formed(&chunks, audio.len());
    assert_eq!(chunks.len(), 3);
    assert!(chunks.iter().all(|c| c.len() <= secs(10.0)));

    // An over-long max is rejected by validate() and capped by plan_chunks().
    let too_long = ChunkConfig {
        max_chunk_ms: 60_000,
        ..ChunkConfig::default()
    };
    assert!(too_long.validate().is_err());
    let mut long = Vec::new();
    speechlike(&mut long, 70.0, &mut noise);
    assert_well_formed(&plan_chunks(&long, SR, &too_long), long.len());
}

#[test]
fn short_clicks_are_dropped() {
    let mut noise = Noise(9);
    let mut audio = Vec::new();
    silence(&mut audio, 2.0);
    speechlike(&mut audio, 0.1, &mut noise);
    silence(&mut audio, 2.0);
    assert!(plan_chunks(&audio, SR, &ChunkConfig::default()).is_empty());
}

#[test]
fn speech_seconds_sums_the_spans() {
    let spans = [
        ChunkSpan {
            seq: 0,
            start: 0,
            end: 16_000,
        },
        ChunkSpan {
            seq: 1,
            start: 32_000,
            end: 40_000,
        },
    ];
    assert!((speech_seconds(&spans, SR) - 1.5).abs() < 1e-9);
    assert_eq!(speech_seconds(&spans, 0), 0.0);
    assert_eq!(speech_seconds(&[], SR), 0.0);
}

#[test]
fn config_defaults_validate_and_unknown_fields_are_rejected() {
    let config = ChunkConfig::default();
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.max_chunk_ms, 30_000);
    let parsed: ChunkConfig = serde_json::from_str(r#"{"min_speech_ms": 200}"#).unwrap();
    assert_eq!(parsed.min_speech_ms, 200);
    assert_eq!(parsed.frame_ms, 30);
    assert!(serde_json::from_str::<ChunkConfig>(r#"{"max_chunk": 1}"#).is_err());

    let bad = [
        ChunkConfig {
            frame_ms: 0,
            ..config.clone()
        },
        ChunkConfig {
            hysteresis_db: 12.0,
            ..config.clone()
        },
        ChunkConfig {
            noise_percentile: 80.0,
            ..config.clone()
        },
        ChunkConfig {
            split_search_ms: 20_000,
            ..config.clone()
        },
        ChunkConfig {
            max_gap_in_chunk_ms: 100,
            ..config.clone()
        },
        ChunkConfig {
            noise_margin_db: f32::NAN,
            ..config.clone()
        },
    ];
    for config in bad {
        let err = config.validate().unwrap_err();
        assert_eq!(err.class(), mmt_core::ErrorClass::UserInput);
    }
}

/// Reads a 16-bit PCM mono WAV from the repository's `samples/`.
fn read_sample(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(name);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let mut pos = 12;
    let mut format_ok = false;
    while pos + 8 <= bytes.len() {
        let (id, size) = (&bytes[pos..pos + 4], u32_at(pos + 4) as usize);
        let body = pos + 8;
        if id == b"fmt " {
            // PCM, mono, 16 kHz, 16 bits.
            assert_eq!(
                (
                    u16_at(body),
                    u16_at(body + 2),
                    u32_at(body + 4),
                    u16_at(body + 14)
                ),
                (1, 1, SR, 16)
            );
            format_ok = true;
        } else if id == b"data" {
            assert!(format_ok, "data before fmt in {name}");
            let end = (body + size).min(bytes.len());
            return bytes[body..end]
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                .collect();
        }
        pos = body + size + size % 2;
    }
    panic!("no data chunk in {name}");
}

/// The span from the first to the last clearly loud frame (≥ -35 dBFS).
fn loud_span(audio: &[f32]) -> (usize, usize) {
    let energies = vad::frame_energies(audio, 480);
    let loud: Vec<usize> = (0..energies.len())
        .filter(|&i| energies[i] >= -35.0)
        .collect();
    (
        loud[0] * 480,
        ((loud[loud.len() - 1] + 1) * 480).min(audio.len()),
    )
}

#[test]
fn real_speech_is_one_chunk_covering_the_speech() {
    let config = ChunkConfig::default();
    for name in ["jfk_inaugural_1961_excerpt.wav", "dict_001.wav"] {
        let clip = read_sample(name);
        let (speech_start, speech_end) = loud_span(&clip);

        let chunks = plan_chunks(&clip, SR, &config);
        assert_well_formed(&chunks, clip.len());
        assert_eq!(chunks.len(), 1, "{name}: {chunks:?}");
        let coverage =
            covered(&chunks, speech_start, speech_end) as f64 / (speech_end - speech_start) as f64;
        assert!(
            coverage >= 0.95,
            "{name}: covers {coverage:.3} of the speech"
        );

        // Ten seconds of digital silence either side are not sent to the model.
        let lead = secs(10.0);
        let mut padded = vec![0.0; lead];
        padded.extend_from_slice(&clip);
        padded.extend(std::iter::repeat_n(0.0, lead));
        let chunks = plan_chunks(&padded, SR, &config);
        assert_well_formed(&chunks, padded.len());
        assert_eq!(chunks.len(), 1, "{name} padded: {chunks:?}");
        let pad = secs(0.2);
        assert!(chunks[0].start + pad >= lead, "{name}: {chunks:?}");
        assert!(
            chunks[0].end <= lead + clip.len() + pad,
            "{name}: {chunks:?}"
        );
        let coverage = covered(&chunks, lead + speech_start, lead + speech_end) as f64
            / (speech_end - speech_start) as f64;
        assert!(coverage >= 0.95, "{name} padded: covers {coverage:.3}");
    }
}

#[test]
fn every_shipped_sample_fits_in_one_chunk() {
    for name in [
        "dict_005.wav",
        "librispeech_61-70968-0002.wav",
        "ljspeech_LJ001-0001.wav",
    ] {
        let clip = read_sample(name);
        let chunks = plan_chunks(&clip, SR, &ChunkConfig::default());
        assert_well_formed(&chunks, clip.len());
        assert_eq!(chunks.len(), 1, "{name}: {chunks:?}");
        let (start, end) = loud_span(&clip);
        assert!(covered(&chunks, start, end) as f64 >= 0.95 * (end - start) as f64);
    }
}

#[test]
fn speech_in_steady_noise_is_found() {
    let mut noise = Noise(11);
    // Background noise at about -35 dBFS, well above the absolute floor.
    let mut audio = Vec::new();
    white(&mut audio, 5.0, 0.03, &mut noise);
    let first = audio.len();
    speechlike(&mut audio, 4.0, &mut noise);
    let first = (first, audio.len());
    white(&mut audio, 8.0, 0.03, &mut noise);
    let second = audio.len();
    speechlike(&mut audio, 6.0, &mut noise);
    let second = (second, audio.len());
    white(&mut audio, 5.0, 0.03, &mut noise);
    for (i, sample) in audio.iter_mut().enumerate() {
        let inside = |(s, e): (usize, usize)| (s..e).contains(&i);
        if inside(first) || inside(second) {
            *sample += 0.03 * noise.next();
        }
    }

    let chunks = plan_chunks(&audio, SR, &ChunkConfig::default());
    assert_well_formed(&chunks, audio.len());
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    let pad = secs(0.2) + 480;
    for (chunk, (start, end)) in chunks.iter().zip([first, second]) {
        assert!(chunk.start <= start && end <= chunk.end, "{chunk:?}");
        assert!(
            chunk.start + pad >= start && chunk.end <= end + pad,
            "{chunk:?}"
        );
    }
}

#[test]
fn a_short_word_next_to_speech_is_kept() {
    let mut noise = Noise(13);
    let mut audio = Vec::new();
    silence(&mut audio, 1.0);
    speechlike(&mut audio, 3.0, &mut noise);
    silence(&mut audio, 0.8);
    speechlike(&mut audio, 0.15, &mut noise);
    let word_end = audio.len();
    silence(&mut audio, 5.0);
    let chunks = plan_chunks(&audio, SR, &ChunkConfig::default());
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert!(chunks[0].end >= word_end, "{chunks:?}");
}

#[test]
fn many_clicks_are_planned_in_linear_time() {
    // Ten minutes of 60 ms clicks every 400 ms: thousands of short bursts, none kept.
    let mut noise = Noise(17);
    let mut audio = Vec::new();
    while audio.len() < secs(600.0) {
        speechlike(&mut audio, 0.06, &mut noise);
        silence(&mut audio, 0.34);
    }
    let started = std::time::Instant::now();
    assert!(plan_chunks(&audio, SR, &ChunkConfig::default()).is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn sparse_speech_in_a_long_recording_is_found() {
    let mut noise = Noise(19);
    // One second of speech in five minutes: under 1% of the frames, in digital
    // silence and in loud steady noise (about -35 dBFS).
    for background in [0.0, 0.03] {
        let mut audio = Vec::new();
        white(&mut audio, 150.0, background, &mut noise);
        let start = audio.len();
        speechlike(&mut audio, 1.0, &mut noise);
        let end = audio.len();
        white(&mut audio, 150.0, background, &mut noise);
        let chunks = plan_chunks(&audio, SR, &ChunkConfig::default());
        assert_eq!(chunks.len(), 1, "background {background}: {chunks:?}");
        assert!(covered(&chunks, start, end) as f64 >= 0.95 * (end - start) as f64);
        assert!(chunks[0].len() <= end - start + secs(0.5), "{chunks:?}");
    }
}

/// Feeds `audio` to a [`SpeechAnalyzer`] in blocks of the given sizes (cycled).
fn analyze_in_blocks(audio: &[f32], blocks: &[usize], config: &ChunkConfig) -> SpeechAnalyzer {
    let mut analyzer = SpeechAnalyzer::new(SR, config);
    let mut rest = audio;
    for &size in blocks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (block, tail) = rest.split_at(size.min(rest.len()));
        analyzer.push(block);
        rest = tail;
    }
    analyzer
}

#[test]
fn streamed_analysis_plans_the_same_chunks_as_the_whole_buffer() {
    let mut noise = Noise(7);
    let mut audio = Vec::new();
    silence(&mut audio, 1.3);
    speechlike(&mut audio, 12.0, &mut noise);
    white(&mut audio, 2.0, 0.001, &mut noise);
    speechlike(&mut audio, 41.0, &mut noise);
    silence(&mut audio, 5.0);
    speechlike(&mut audio, 0.4, &mut noise);
    audio.push(f32::NAN);
    audio.extend([0.3; 17]);
    let mut real = read_sample("dict_001.wav");
    real.extend(&audio);
    for clip in [&audio[..], &real[..], &audio[..100], &[][..]] {
        for config in [
            ChunkConfig::default(),
            ChunkConfig {
                frame_ms: 7,
                max_chunk_ms: 10_000,
                split_search_ms: 2_000,
                ..ChunkConfig::default()
            },
        ] {
            let frame_len = vad::ms_to_samples(config.frame_ms, SR);
            let whole = plan_chunks(clip, SR, &config);
            for blocks in [&[1usize, 479, 4_096][..], &[frame_len], &[333]] {
                let streamed = analyze_in_blocks(clip, blocks, &config);
                assert_eq!(streamed.total_samples(), clip.len());
                // Whole frames so far; the last, partial one joins at `plan`.
                let full_frames = clip.len() / frame_len;
                assert_eq!(
                    streamed.energies,
                    vad::frame_energies(clip, frame_len)[..full_frames],
                    "frame energies, blocks {blocks:?}"
                );
                assert_eq!(streamed.plan(&config), whole, "blocks {blocks:?}");
            }
        }
    }
}

//! The bad-input corpus's cases, built at test time (see `README.md` beside
//! this file): only the few files no tool here writes (`files/`) are
//! committed; every other case is made here from them, from the
//! repository's audio fixtures and samples, and from fixed-seed random bytes.
//! What each case must end in is in `manifest.jsonl`, by id.

#![allow(dead_code)]

use crate::common::{root, wav_file};
use serde_json::{json, Value};

/// A file for `mmt run --input`: audio, and the sidecar beside it.
pub struct FolderCase {
    pub id: String,
    pub extension: &'static str,
    pub audio: Vec<u8>,
    pub sidecar: Option<Vec<u8>>,
}

/// A message body for a broker.
pub struct EnvelopeCase {
    pub id: String,
    pub body: Vec<u8>,
}

/// One request to `mmt serve`.
pub struct ApiCase {
    pub id: String,
    pub method: &'static str,
    pub path: String,
    /// `None`: no Authorization header; `Some("")`: the test's valid token.
    pub authorization: Option<String>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

pub const BOUNDARY: &str = "mmt-corpus-boundary";

/// Fixed-seed bytes (xorshift), so a case is the same on every run.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("whisper/tests/fixtures").join(name)).expect("fixture")
}

pub fn corpus_file(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/corpus/files").join(name)).expect("corpus file")
}

/// 16-bit little-endian samples of a tone (no speech: the VAD finds
/// nothing, so a job of it completes without the model's time).
pub fn tone_pcm(rate: u32, seconds: f32, channels: u16, pitch: f32) -> Vec<u8> {
    let frames = (rate as f32 * seconds) as usize;
    (0..frames)
        .flat_map(|i| {
            let s =
                ((i as f32 * pitch * std::f32::consts::TAU / rate as f32).sin() * 6000.0) as i16;
            std::iter::repeat_n(s, channels as usize).flat_map(i16::to_le_bytes)
        })
        .collect()
}

/// A distinct tone WAV (`n` sets the pitch, so every case is its own job).
pub fn tone_wav(n: u32) -> Vec<u8> {
    wav_file(
        1,
        16_000,
        1,
        16,
        &tone_pcm(16_000, 0.2, 1, 200.0 + n as f32),
    )
}

/// Two seconds of a real dictation at 16 kHz (samples/dict_001.wav).
fn speech_16k() -> Vec<f32> {
    let bytes = std::fs::read(root().join("samples/dict_001.wav")).expect("sample");
    bytes[44..]
        .chunks_exact(2)
        .skip(16_000)
        .take(32_000)
        .map(|p| f32::from(i16::from_le_bytes([p[0], p[1]])) / 32768.0)
        .collect()
}

/// The speech at `rate` (linear interpolation), on `channels` channels
/// (each a little quieter than the one before), as `bits`-bit PCM or
/// 32-bit float (`float`).
pub fn speech_wav(rate: u32, channels: u16, bits: u16, float: bool) -> Vec<u8> {
    let speech = speech_16k();
    let frames = (speech.len() as u64 * u64::from(rate) / 16_000) as usize;
    let mut data = Vec::new();
    for i in 0..frames {
        let at = i as f64 * 16_000.0 / f64::from(rate);
        let j = at.floor() as usize;
        let frac = (at - j as f64) as f32;
        let a = speech[j.min(speech.len() - 1)];
        let b = speech[(j + 1).min(speech.len() - 1)];
        let s = a + (b - a) * frac;
        for c in 0..channels {
            let s = s * (1.0 - 0.1 * f32::from(c));
            if float {
                data.extend_from_slice(&s.to_le_bytes());
            } else if bits == 24 {
                let v = (s * 8_388_607.0) as i32;
                data.extend_from_slice(&v.to_le_bytes()[..3]);
            } else if bits == 8 {
                data.push(((s * 127.0) as i16 + 128) as u8);
            } else {
                data.extend_from_slice(&((s * 32767.0) as i16).to_le_bytes());
            }
        }
    }
    wav_file(if float { 3 } else { 1 }, rate, channels, bits, &data)
}

/// `bytes` with `patch` written at `at`.
fn patched(mut bytes: Vec<u8>, at: usize, patch: &[u8]) -> Vec<u8> {
    bytes[at..at + patch.len()].copy_from_slice(patch);
    bytes
}

fn sidecar(value: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&value).expect("json"))
}

/// The audio and sidecar cases `mmt run` reads from one folder.
pub fn folder_cases() -> Vec<FolderCase> {
    let mut cases = Vec::new();
    let n = std::cell::Cell::new(0u32);
    let mut add = |id: &str, extension: &'static str, audio: Vec<u8>, sidecar: Option<Vec<u8>>| {
        cases.push(FolderCase {
            id: id.to_owned(),
            extension,
            audio,
            sidecar,
        });
    };
    let next_tone = || {
        n.set(n.get() + 1);
        tone_wav(n.get())
    };

    // WAV header fields, each wrong in turn, over a short tone.
    let header = |format: u16, rate: u32, channels: u16, bits: u16, n: u32| {
        wav_file(
            format,
            rate,
            channels,
            bits,
            &tone_pcm(16_000, 0.2, 1, 300.0 + n as f32),
        )
    };
    for (id, format, rate, channels, bits) in [
        ("wav-rate-0", 1, 0, 1, 16),
        ("wav-rate-1", 1, 1, 1, 16),
        ("wav-rate-999", 1, 999, 1, 16),
        ("wav-rate-768001", 1, 768_001, 1, 16),
        ("wav-rate-u32-max", 1, u32::MAX, 1, 16),
        ("wav-channels-0", 1, 16_000, 0, 16),
        ("wav-channels-65535", 1, 16_000, 65_535, 16),
        ("wav-bits-0", 1, 16_000, 1, 0),
        ("wav-bits-7", 1, 16_000, 1, 7),
        ("wav-bits-12", 1, 16_000, 1, 12),
        ("wav-bits-64", 1, 16_000, 1, 64),
        ("wav-bits-65535", 1, 16_000, 1, 65_535),
        ("wav-format-unknown", 0x1234, 16_000, 1, 16),
        ("wav-format-adpcm", 2, 16_000, 1, 4),
        ("wav-format-mp3-in-wav", 0x55, 16_000, 1, 16),
        ("wav-format-float-16bit", 3, 16_000, 1, 16),
        ("wav-format-alaw-16bit", 6, 16_000, 1, 16),
        ("wav-format-extensible-short", 0xfffe, 16_000, 1, 16),
    ] {
        n.set(n.get() + 1);
        add(
            id,
            "wav",
            header(format, rate, channels, bits, n.get()),
            None,
        );
    }
    // Lengths and chunk sizes that lie.
    let base = next_tone();
    for (id, at, value) in [
        ("wav-riff-len-0", 4, 0u32),
        ("wav-riff-len-8", 4, 8),
        ("wav-riff-len-max", 4, u32::MAX),
        ("wav-fmt-size-0", 16, 0),
        ("wav-fmt-size-2", 16, 2),
        ("wav-fmt-size-14", 16, 14),
        ("wav-fmt-size-huge", 16, 0xffff_fff0),
        ("wav-byte-rate-0", 28, 0),
        ("wav-data-len-0", 40, 0),
        ("wav-data-len-1", 40, 1),
        ("wav-data-len-i32-max", 40, 0x7fff_ffff),
        ("wav-data-len-max", 40, u32::MAX),
    ] {
        add(
            id,
            "wav",
            patched(base.clone(), at, &value.to_le_bytes()),
            None,
        );
    }
    add(
        "wav-block-align-0",
        "wav",
        patched(next_tone(), 32, &[0, 0]),
        None,
    );
    let tone = next_tone();
    let mut no_fmt = b"RIFF\0\0\0\0WAVE".to_vec();
    no_fmt.extend_from_slice(&tone[36..]);
    add("wav-no-fmt-chunk", "wav", no_fmt, None);
    add("wav-no-data-chunk", "wav", next_tone()[..36].to_vec(), None);
    let tone = next_tone();
    let mut data_first = tone[..12].to_vec();
    data_first.extend_from_slice(&tone[36..]);
    data_first.extend_from_slice(&tone[12..36]);
    add("wav-data-before-fmt", "wav", data_first, None);
    let tone = next_tone();
    let mut list = tone[..36].to_vec();
    list.extend_from_slice(b"LIST");
    list.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    list.extend_from_slice(&tone[36..]);
    add("wav-list-chunk-huge", "wav", list, None);
    add(
        "wav-rifx-magic",
        "wav",
        patched(next_tone(), 0, b"RIFX"),
        None,
    );
    add(
        "wav-rf64-magic",
        "wav",
        patched(next_tone(), 0, b"RF64"),
        None,
    );
    add(
        "wav-wave-magic-wrong",
        "wav",
        patched(next_tone(), 8, b"AVI "),
        None,
    );
    add("wav-header-only", "wav", next_tone()[..44].to_vec(), None);
    let mut odd = next_tone()[..44].to_vec();
    odd.push(7);
    add("wav-one-data-byte", "wav", odd, None);

    // FLAC STREAMINFO: absurd rate, absurd declared length.
    let flac = fixture("jfk_16k_mono.flac");
    // Bytes 18..21 hold 20 bits of rate; 21..26 the rest, ending in 36 bits of total samples.
    let mut zero_rate = flac.clone();
    zero_rate[18] = 0;
    zero_rate[19] = 0;
    zero_rate[20] &= 0x0f;
    add("flac-rate-0", "flac", zero_rate, None);
    let mut huge_rate = flac.clone();
    huge_rate[18] = 0xff;
    huge_rate[19] = 0xff;
    huge_rate[20] |= 0xf0;
    add("flac-rate-1048575", "flac", huge_rate, None);
    let mut forever = flac.clone();
    forever[21] |= 0x0f;
    for byte in &mut forever[22..26] {
        *byte = 0xff;
    }
    add("flac-declares-1193-hours", "flac", forever, None);

    // Every format: truncated, its magic broken, its body corrupted.
    let formats: [(&str, &'static str, &str); 6] = [
        ("wav22k", "wav", "jfk_s16_22k_mono.wav"),
        ("wavf32", "wav", "jfk_f32_44k_stereo.wav"),
        ("flac", "flac", "jfk_16k_mono.flac"),
        ("mp3", "mp3", "jfk_44k_mono.mp3"),
        ("vorbis", "ogg", "jfk_16k_mono_vorbis.ogg"),
        ("opus", "opus", "jfk_opus.opus"),
    ];
    for (name, extension, file) in formats {
        let bytes = fixture(file);
        for cut in [4usize, 16, 100] {
            add(
                &format!("{name}-truncated-{cut}-bytes"),
                extension,
                bytes[..cut].to_vec(),
                None,
            );
        }
        add(
            &format!("{name}-truncated-40-percent"),
            extension,
            bytes[..bytes.len() * 2 / 5].to_vec(),
            None,
        );
        add(
            &format!("{name}-magic-zeroed"),
            extension,
            patched(bytes.clone(), 0, &[0; 4]),
            None,
        );
        let mut head_noise = bytes.clone();
        let noise_len = 512.min(bytes.len());
        head_noise[..noise_len].copy_from_slice(&noise(7, noise_len));
        add(
            &format!("{name}-first-512-bytes-noise"),
            extension,
            head_noise,
            None,
        );
        let mut body = bytes.clone();
        for (i, byte) in body.iter_mut().enumerate().skip(200) {
            if i % 13 == 0 {
                *byte ^= 0x5a;
            }
        }
        add(&format!("{name}-body-corrupted"), extension, body, None);
        add(&format!("{name}-complete"), extension, bytes, None);
    }

    // Empty files of every extension (a tenant each: same bytes, own job).
    for extension in ["wav", "flac", "mp3", "ogg", "opus", "oga"] {
        add(
            &format!("empty-{extension}"),
            extension,
            Vec::new(),
            sidecar(json!({"tenant": format!("empty-{extension}")})),
        );
    }
    // Random bytes, and files of other kinds, under audio names.
    for (i, (extension, len)) in [
        ("wav", 16),
        ("wav", 4096),
        ("mp3", 1),
        ("mp3", 65_536),
        ("flac", 1024),
        ("ogg", 8192),
        ("opus", 300),
        ("oga", 100_000),
    ]
    .into_iter()
    .enumerate()
    {
        add(
            &format!("random-{len}-bytes-{extension}"),
            extension,
            noise(100 + i as u64, len),
            None,
        );
    }
    for (id, extension, bytes) in [
        (
            "text-as-wav",
            "wav",
            b"This is not audio. Smith John 1958-03-12\n".to_vec(),
        ),
        (
            "html-as-mp3",
            "mp3",
            b"<!doctype html><html><body><script>alert(1)</script></body></html>".to_vec(),
        ),
        (
            "json-as-ogg",
            "ogg",
            br#"{"tenant":"clinic-a","audio":"none"}"#.to_vec(),
        ),
        (
            "png-as-wav",
            "wav",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89"
                .to_vec(),
        ),
        (
            "pdf-as-flac",
            "flac",
            b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF".to_vec(),
        ),
        (
            "elf-as-mp3",
            "mp3",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0\x01\0\0\0".to_vec(),
        ),
        (
            "gzip-as-wav",
            "wav",
            b"\x1f\x8b\x08\0\0\0\0\0\0\x03\x0b\xc9\xc8,\x06\0".to_vec(),
        ),
        ("zip-as-ogg", "ogg", b"PK\x03\x04\x14\0\0\0\x08\0".to_vec()),
        (
            "id3-tag-only-mp3",
            "mp3",
            b"ID3\x04\0\0\0\0\0\x0aTIT2\0\0\0\x02\0\0\0x".to_vec(),
        ),
        ("oggs-magic-only", "ogg", b"OggS".to_vec()),
        ("flac-magic-only", "flac", b"fLaC".to_vec()),
        (
            "video-mp4-as-wav",
            "wav",
            corpus_file("video_mpeg4_aac.mp4"),
        ),
        (
            "video-mkv-as-ogg",
            "ogg",
            corpus_file("video_mpeg4_pcm.mkv"),
        ),
        (
            "video-avi-as-wav",
            "wav",
            corpus_file("video_mpeg4_pcm.avi"),
        ),
    ] {
        add(id, extension, bytes, None);
    }

    // Fuzz findings (tests/fuzz.rs), kept as regressions: float samples
    // that are NaN, infinite or huge made the resampler panic.
    add(
        "fuzz-audio-decoder-resampler-panic",
        "wav",
        corpus_file("fuzz-audio-decoder-resampler-panic.wav"),
        None,
    );
    let non_finite: Vec<u8> = (0..22_050)
        .flat_map(|i| [f32::NAN, f32::INFINITY, -3.0e38, 0.25][i % 4].to_le_bytes())
        .collect();
    add(
        "wav-float-non-finite-44k",
        "wav",
        wav_file(3, 44_100, 1, 32, &non_finite),
        None,
    );

    // Short, long-declared and odd but valid: these complete.
    add(
        "tone-0.1s",
        "wav",
        wav_file(1, 16_000, 1, 16, &tone_pcm(16_000, 0.1, 1, 440.0)),
        None,
    );
    add(
        "silence-0.1s",
        "wav",
        wav_file(1, 16_000, 1, 16, &[0; 3200]),
        None,
    );
    add(
        "one-sample",
        "wav",
        wav_file(1, 16_000, 1, 16, &[1, 0]),
        None,
    );
    add(
        "tone-0.1s-48k-stereo",
        "wav",
        wav_file(1, 48_000, 2, 16, &tone_pcm(48_000, 0.1, 2, 440.0)),
        None,
    );
    add(
        "tone-6ch-96k-24bit",
        "wav",
        {
            let pcm: Vec<u8> = tone_pcm(96_000, 0.2, 6, 300.0)
                .chunks(2)
                .flat_map(|s| [0, s[0], s[1]])
                .collect();
            wav_file(1, 96_000, 6, 24, &pcm)
        },
        None,
    );
    for (id, rate, channels, bits, float) in [
        ("speech-8k-mono-8bit", 8_000, 1, 8, false),
        ("speech-11025-mono", 11_025, 1, 16, false),
        ("speech-44100-stereo", 44_100, 2, 16, false),
        ("speech-48k-6ch", 48_000, 6, 16, false),
        ("speech-96k-stereo", 96_000, 2, 16, false),
        ("speech-96k-stereo-24bit", 96_000, 2, 24, false),
        ("speech-44100-stereo-float", 44_100, 2, 32, true),
    ] {
        add(id, "wav", speech_wav(rate, channels, bits, float), None);
    }

    // Sidecars, each beside its own tone: broken, wrongly typed, hostile.
    let mut deep = "[".repeat(100_000);
    deep.push_str(&"]".repeat(100_000));
    let huge = format!(r#"{{"tenant":"{}"}}"#, "Smith John ".repeat(200_000));
    let sidecars: Vec<(&str, Vec<u8>)> = vec![
        ("sidecar-not-json", b"tenant = Smith John".to_vec()),
        (
            "sidecar-truncated",
            br#"{"tenant": "clinic-a", "patient": "Smith John"#.to_vec(),
        ),
        ("sidecar-empty-file", Vec::new()),
        ("sidecar-null", b"null".to_vec()),
        ("sidecar-array", br#"["Smith John"]"#.to_vec()),
        ("sidecar-number", b"1958".to_vec()),
        ("sidecar-string", br#""Smith John""#.to_vec()),
        (
            "sidecar-utf8-bom",
            b"\xef\xbb\xbf{\"tenant\":\"clinic-a\"}".to_vec(),
        ),
        (
            "sidecar-invalid-utf8-in-string",
            b"{\"tenant\":\"Smith \xff\xfe John\"}".to_vec(),
        ),
        (
            "sidecar-invalid-utf8-outside",
            b"{\xff\"tenant\":\"a\"}".to_vec(),
        ),
        (
            "sidecar-lone-surrogate",
            br#"{"tenant":"\ud800 Smith John"}"#.to_vec(),
        ),
        (
            "sidecar-nul-in-tenant",
            br#"{"tenant":"clinic\u0000Smith John"}"#.to_vec(),
        ),
        ("sidecar-deep-nesting", deep.into_bytes()),
        ("sidecar-huge-2mb", huge.into_bytes()),
        (
            "sidecar-unknown-field",
            br#"{"tenant":"clinic-a","Smith John":"1958-03-12"}"#.to_vec(),
        ),
        (
            "sidecar-duplicate-field",
            br#"{"tenant":"clinic-a","tenant":"clinic-b"}"#.to_vec(),
        ),
        ("sidecar-tenant-number", br#"{"tenant":19580312}"#.to_vec()),
        (
            "sidecar-patient-array",
            br#"{"patient":["Patient/MRN-4471-CANARY"]}"#.to_vec(),
        ),
        (
            "sidecar-encounter-object",
            br#"{"encounter":{"id":"1958-03-12"}}"#.to_vec(),
        ),
        (
            "sidecar-tenant-65-chars",
            format!(r#"{{"tenant":"{}"}}"#, "a".repeat(65)).into_bytes(),
        ),
        ("sidecar-tenant-empty", br#"{"tenant":""}"#.to_vec()),
        (
            "sidecar-tenant-sql",
            br#"{"tenant":"x'; DROP TABLE jobs; -- Smith John"}"#.to_vec(),
        ),
        (
            "sidecar-tenant-path",
            br#"{"tenant":"../../etc/Smith John"}"#.to_vec(),
        ),
        (
            "sidecar-patient-html",
            br#"{"patient":"<script>alert('Smith John')</script>"}"#.to_vec(),
        ),
        (
            "sidecar-patient-shell",
            br#"{"patient":"Patient/$(touch /tmp/pwned-Smith John)"}"#.to_vec(),
        ),
        (
            "sidecar-patient-wrong-type",
            br#"{"patient":"Encounter/MRN-4471-CANARY"}"#.to_vec(),
        ),
        (
            "sidecar-encounter-sql",
            br#"{"encounter":"Encounter/1' OR '1'='1"}"#.to_vec(),
        ),
        (
            "sidecar-patient-id-65-chars",
            format!(r#"{{"patient":"Patient/{}"}}"#, "9".repeat(65)).into_bytes(),
        ),
    ];
    for (id, bytes) in sidecars {
        let audio = next_tone();
        add(id, "wav", audio, Some(bytes));
    }
    // Odd but valid sidecars: these complete.
    for (id, bytes) in [
        (
            "sidecar-nulls",
            br#"{"tenant":null,"patient":null,"encounter":null}"#.to_vec(),
        ),
        (
            "sidecar-whitespace",
            b" \n\t{ \"tenant\" : \"clinic-a\" }\n\n".to_vec(),
        ),
        (
            "sidecar-all-fields",
            br#"{"tenant":"clinic.a_b-c","patient":"Patient/A-1.2","encounter":"Encounter/9"}"#
                .to_vec(),
        ),
    ] {
        let audio = next_tone();
        add(id, "wav", audio, Some(bytes));
    }
    cases
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A valid envelope around `audio`, with `change` applied to its JSON.
fn envelope(audio: &[u8], change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut body = json!({
        "version": 1,
        "tenant": "clinic-a",
        "client_reference": "order-1",
        "audio": {"inline": {"data": b64(audio), "format": "wav"}},
        "patient_reference": "Patient/p-1",
        "encounter_reference": "Encounter/e-1",
        "priority": 1,
    });
    change(&mut body);
    serde_json::to_vec(&body).expect("json")
}

/// Job envelopes as a broker delivers them: not JSON, wrongly typed,
/// hostile, huge, and valid ones around bad audio.
pub fn envelope_cases() -> Vec<EnvelopeCase> {
    let mut cases = Vec::new();
    let mut add = |id: &str, body: Vec<u8>| {
        cases.push(EnvelopeCase {
            id: id.to_owned(),
            body,
        })
    };
    let tone = |n: u32| tone_wav(1000 + n);
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("envelope-empty-body", Vec::new()),
        (
            "envelope-not-json",
            b"tenant=Smith John&audio=1958-03-12".to_vec(),
        ),
        (
            "envelope-truncated",
            br#"{"tenant":"clinic-a","audio":{"inline":{"data":"Smith John"#.to_vec(),
        ),
        (
            "envelope-invalid-utf8",
            b"{\"tenant\":\"clinic-\xff\xfe\",\"audio\":{}}".to_vec(),
        ),
        (
            "envelope-utf8-bom",
            b"\xef\xbb\xbf{\"tenant\":\"clinic-a\"}".to_vec(),
        ),
        ("envelope-null", b"null".to_vec()),
        ("envelope-array", br#"[{"tenant":"clinic-a"}]"#.to_vec()),
        ("envelope-number", b"19580312".to_vec()),
        ("envelope-string", br#""Smith John""#.to_vec()),
        (
            "envelope-trailing-garbage",
            [envelope(&tone(1), |_| {}), b" Smith John".to_vec()].concat(),
        ),
        (
            "envelope-two-documents",
            [envelope(&tone(2), |_| {}), envelope(&tone(3), |_| {})].concat(),
        ),
        (
            "envelope-lone-surrogate",
            br#"{"tenant":"\udfff","audio":{"inline":{"data":""}}}"#.to_vec(),
        ),
        ("envelope-deep-nesting", {
            let mut deep = br#"{"tenant":"clinic-a","audio":"#.to_vec();
            deep.extend(std::iter::repeat_n(b'[', 200_000));
            deep.extend(std::iter::repeat_n(b']', 200_000));
            deep.push(b'}');
            deep
        }),
        (
            "envelope-duplicate-field",
            br#"{"tenant":"clinic-a","tenant":"Smith John","audio":{"inline":{"data":""}}}"#
                .to_vec(),
        ),
        (
            "envelope-nul-bytes",
            b"{\"tenant\":\"clinic-a\"\0\0\0}".to_vec(),
        ),
    ];
    for (id, body) in raw {
        add(id, body);
    }
    type Change = Box<dyn FnOnce(&mut Value)>;
    let wrong: Vec<(&str, Change)> = vec![
        (
            "envelope-unknown-field",
            Box::new(|v| v["Smith John"] = json!("1958-03-12")),
        ),
        (
            "envelope-unknown-audio-field",
            Box::new(|v| v["audio"]["inline"]["Smith John"] = json!(1)),
        ),
        (
            "envelope-missing-tenant",
            Box::new(|v| {
                v.as_object_mut().map(|o| o.remove("tenant"));
            }),
        ),
        (
            "envelope-missing-audio",
            Box::new(|v| {
                v.as_object_mut().map(|o| o.remove("audio"));
            }),
        ),
        ("envelope-version-2", Box::new(|v| v["version"] = json!(2))),
        (
            "envelope-version-string",
            Box::new(|v| v["version"] = json!("1")),
        ),
        (
            "envelope-version-huge",
            Box::new(|v| v["version"] = json!(18_446_744_073_709_551_615u64)),
        ),
        (
            "envelope-tenant-number",
            Box::new(|v| v["tenant"] = json!(19580312)),
        ),
        (
            "envelope-tenant-null",
            Box::new(|v| v["tenant"] = Value::Null),
        ),
        (
            "envelope-tenant-sql",
            Box::new(|v| v["tenant"] = json!("a'; DROP TABLE jobs; -- Smith John")),
        ),
        (
            "envelope-tenant-html",
            Box::new(|v| v["tenant"] = json!("<img src=x onerror=alert('Smith John')>")),
        ),
        (
            "envelope-tenant-shell",
            Box::new(|v| v["tenant"] = json!("$(curl http://127.0.0.1:9/Smith John)")),
        ),
        (
            "envelope-tenant-65-chars",
            Box::new(|v| v["tenant"] = json!("t".repeat(65))),
        ),
        (
            "envelope-priority-negative",
            Box::new(|v| v["priority"] = json!(-1)),
        ),
        (
            "envelope-priority-256",
            Box::new(|v| v["priority"] = json!(256)),
        ),
        (
            "envelope-priority-10",
            Box::new(|v| v["priority"] = json!(10)),
        ),
        (
            "envelope-priority-float",
            Box::new(|v| v["priority"] = json!(1.5)),
        ),
        (
            "envelope-priority-string",
            Box::new(|v| v["priority"] = json!("Smith John")),
        ),
        (
            "envelope-audio-string",
            Box::new(|v| v["audio"] = json!("Smith John")),
        ),
        (
            "envelope-audio-empty-object",
            Box::new(|v| v["audio"] = json!({})),
        ),
        (
            "envelope-audio-both-forms",
            Box::new(|v| v["audio"]["reference"] = json!({"url": "a.wav"})),
        ),
        (
            "envelope-data-number",
            Box::new(|v| v["audio"]["inline"]["data"] = json!(1958)),
        ),
        (
            "envelope-data-not-base64",
            Box::new(|v| v["audio"]["inline"]["data"] = json!("Smith John!!")),
        ),
        (
            "envelope-data-url-safe-base64",
            Box::new(|v| v["audio"]["inline"]["data"] = json!("-_-_")),
        ),
        (
            "envelope-data-unpadded",
            Box::new(|v| v["audio"]["inline"]["data"] = json!("UklGRg")),
        ),
        (
            "envelope-format-exe",
            Box::new(|v| v["audio"]["inline"]["format"] = json!("exe")),
        ),
        (
            "envelope-format-array",
            Box::new(|v| v["audio"]["inline"]["format"] = json!(["wav"])),
        ),
        (
            "envelope-reference-without-root",
            Box::new(|v| v["audio"] = json!({"reference": {"url": "/etc/passwd"}})),
        ),
        (
            "envelope-reference-traversal",
            Box::new(|v| v["audio"] = json!({"reference": {"url": "../../../Smith John.wav"}})),
        ),
        (
            "envelope-patient-sql",
            Box::new(|v| v["patient_reference"] = json!("Patient/1' OR '1'='1")),
        ),
        (
            "envelope-patient-name",
            Box::new(|v| v["patient_reference"] = json!("Smith John")),
        ),
        (
            "envelope-patient-number",
            Box::new(|v| v["patient_reference"] = json!(19580312)),
        ),
        (
            "envelope-encounter-html",
            Box::new(|v| v["encounter_reference"] = json!("Encounter/<b>1958-03-12</b>")),
        ),
        (
            "envelope-client-reference-empty",
            Box::new(|v| v["client_reference"] = json!("")),
        ),
        (
            "envelope-client-reference-129",
            Box::new(|v| v["client_reference"] = json!("c".repeat(129))),
        ),
    ];
    for (i, (id, change)) in wrong.into_iter().enumerate() {
        add(id, envelope(&tone(10 + i as u32), change));
    }
    // Valid envelopes, bad audio: dead-lettered by decode.
    add("envelope-audio-empty", envelope(b"", |_| {}));
    add("envelope-audio-random", envelope(&noise(500, 2048), |_| {}));
    add(
        "envelope-audio-truncated-flac",
        envelope(&fixture("jfk_16k_mono.flac")[..64], |v| {
            v["audio"]["inline"]["format"] = json!("flac")
        }),
    );
    add(
        "envelope-audio-video",
        envelope(&corpus_file("video_mpeg4_aac.mp4"), |v| {
            v["audio"]["inline"]["format"] = json!("mp3")
        }),
    );
    add(
        "envelope-audio-rate-0",
        envelope(
            &wav_file(1, 0, 1, 16, &tone_pcm(16_000, 0.1, 1, 500.0)),
            |_| {},
        ),
    );
    // Huge: 12 MB of base64 noise in a valid envelope.
    add("envelope-huge-12mb", envelope(&noise(501, 9 << 20), |_| {}));
    // Odd but valid: these complete.
    add(
        "envelope-valid-96k-stereo",
        envelope(
            &wav_file(1, 96_000, 2, 16, &tone_pcm(96_000, 0.2, 2, 333.0)),
            |v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("client_reference");
                    o.remove("encounter_reference");
                }
            },
        ),
    );
    add(
        "envelope-valid-format-uppercase",
        envelope(&tone(99), |v| v["audio"]["inline"]["format"] = json!("WAV")),
    );
    cases
}

/// A multipart body: text fields, then parts as given (headers, content).
pub fn form(fields: &[(&str, &str)], parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    for (headers, content) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n{headers}\r\n\r\n").as_bytes());
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub const AUDIO_PART: &str =
    "Content-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\nContent-Type: audio/wav";

/// Requests to `mmt serve`: credentials, content types, multipart and JSON
/// bodies, headers; and uploads of bad audio (accepted, then dead-lettered).
pub fn api_cases() -> Vec<ApiCase> {
    let multipart = format!("multipart/form-data; boundary={BOUNDARY}");
    let mut cases = Vec::new();
    let mut tone_n = 2000;
    let mut tone = || {
        tone_n += 1;
        tone_wav(tone_n)
    };
    let mut add = |id: &str,
                   authorization: Option<String>,
                   content_type: Option<&str>,
                   headers: Vec<(&'static str, String)>,
                   body: Vec<u8>| {
        let mut headers = headers;
        if let Some(content_type) = content_type {
            headers.push(("Content-Type", content_type.to_owned()));
        }
        cases.push(ApiCase {
            id: id.to_owned(),
            method: "POST",
            path: "/v1/jobs".to_owned(),
            authorization,
            headers,
            body,
        })
    };
    let upload = |audio: &[u8]| form(&[], &[(AUDIO_PART, audio)]);

    // Credentials.
    for (id, authorization) in [
        ("auth-missing", None),
        ("auth-empty-bearer", Some("Bearer ")),
        ("auth-basic", Some("Basic U21pdGggSm9objoxOTU4LTAzLTEy")),
        ("auth-garbage", Some("Bearer Smith John 1958-03-12")),
        ("auth-three-dots", Some("Bearer a.b.c")),
        ("auth-alg-none", Some("Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwidGVuYW50IjoiY2xpbmljLWEiLCJyb2xlcyI6WyJhZG1pbiJdLCJleHAiOjk5OTk5OTk5OTl9.")),
        ("auth-huge-token", Some("huge")),
        ("auth-expired", Some("expired")),
        ("auth-wrong-secret", Some("wrong-secret")),
        ("auth-bad-tenant-claim", Some("bad-tenant")),
        ("auth-reader-submits", Some("reader")),
        ("auth-no-roles", Some("no-roles")),
    ] {
        let audio = tone();
        let authorization = authorization.map(|a| match a {
            "huge" => format!("Bearer {}", "A".repeat(60_000)),
            other => other.to_owned(),
        });
        add(id, authorization, Some(&multipart), Vec::new(), upload(&audio));
    }
    // Content types.
    for (id, content_type, body) in [
        ("type-missing", None, tone()),
        (
            "type-text-plain",
            Some("text/plain"),
            b"Smith John".to_vec(),
        ),
        ("type-audio-wav-raw", Some("audio/wav"), tone()),
        (
            "type-form-urlencoded",
            Some("application/x-www-form-urlencoded"),
            b"audio=Smith+John".to_vec(),
        ),
        (
            "type-xml",
            Some("application/xml"),
            b"<job><tenant>Smith John</tenant></job>".to_vec(),
        ),
        (
            "type-multipart-no-boundary",
            Some("multipart/form-data"),
            upload(&tone()),
        ),
        (
            "type-multipart-wrong-boundary",
            Some("multipart/form-data; boundary=other"),
            upload(&tone()),
        ),
        (
            "type-multipart-mixed",
            Some("multipart/mixed; boundary=mmt-corpus-boundary"),
            upload(&tone()),
        ),
        (
            "type-json-invalid",
            Some("application/json"),
            br#"{"audio_reference": "Smith John"#.to_vec(),
        ),
        (
            "type-json-invalid-utf8",
            Some("application/json"),
            b"{\"audio_reference\":\"\xff\xfe\"}".to_vec(),
        ),
        (
            "type-json-deep",
            Some("application/json"),
            [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
        ),
        (
            "type-json-unknown-field",
            Some("application/json"),
            br#"{"audio_reference":"/a.wav","Smith John":1}"#.to_vec(),
        ),
        (
            "type-json-wrong-type",
            Some("application/json"),
            br#"{"audio_reference":1958}"#.to_vec(),
        ),
        ("type-json-null", Some("application/json"), b"null".to_vec()),
        (
            "type-json-reference-passwd",
            Some("application/json"),
            br#"{"audio_reference":"/etc/passwd"}"#.to_vec(),
        ),
        (
            "type-json-reference-traversal",
            Some("application/json"),
            br#"{"audio_reference":"../../../../etc/shadow"}"#.to_vec(),
        ),
        (
            "type-json-sql",
            Some("application/json"),
            br#"{"audio_reference":"/a.wav","patient_reference":"Patient/1' OR '1'='1"}"#.to_vec(),
        ),
        (
            "type-json-huge",
            Some("application/json"),
            format!(
                r#"{{"audio_reference":"{}"}}"#,
                "Smith John ".repeat(300_000)
            )
            .into_bytes(),
        ),
    ] {
        add(id, Some(String::new()), content_type, Vec::new(), body);
    }
    // Multipart edge cases.
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("form-empty-body", Vec::new()),
        ("form-only-closing-boundary", format!("--{BOUNDARY}--\r\n").into_bytes()),
        ("form-no-audio-part", form(&[("priority", "1")], &[])),
        ("form-unknown-field", form(&[("Smith John", "1958-03-12")], &[(AUDIO_PART, &tone())])),
        ("form-audio-part-empty", form(&[], &[(AUDIO_PART, b"")])),
        ("form-audio-not-audio", form(&[], &[(AUDIO_PART, b"Smith John 1958-03-12 not audio")])),
        ("form-audio-video", form(&[], &[(AUDIO_PART, &corpus_file("video_mpeg4_aac.mp4"))])),
        ("form-audio-type-html", form(&[], &[("Content-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\nContent-Type: text/html", &tone())])),
        ("form-priority-word", form(&[("priority", "high")], &[(AUDIO_PART, &tone())])),
        ("form-priority-10", form(&[("priority", "10")], &[(AUDIO_PART, &tone())])),
        ("form-priority-negative", form(&[("priority", "-1")], &[(AUDIO_PART, &tone())])),
        ("form-priority-huge", form(&[("priority", "18446744073709551616")], &[(AUDIO_PART, &tone())])),
        ("form-patient-name", form(&[("patient_reference", "Smith John")], &[(AUDIO_PART, &tone())])),
        ("form-patient-sql", form(&[("patient_reference", "Patient/1'; DROP TABLE jobs;--")], &[(AUDIO_PART, &tone())])),
        ("form-encounter-html", form(&[("encounter_reference", "<script>1958-03-12</script>")], &[(AUDIO_PART, &tone())])),
        ("form-callback-disabled", form(&[("callback_url", "https://example.org/hook")], &[(AUDIO_PART, &tone())])),
        ("form-part-without-name", form(&[], &[("Content-Disposition: form-data; filename=\"a.wav\"", &tone())])),
        ("form-part-without-disposition", form(&[], &[("Content-Type: audio/wav", &tone())])),
        ("form-truncated", {
            let mut body = form(&[], &[(AUDIO_PART, &tone())]);
            body.truncate(body.len() / 2);
            body
        }),
        ("form-no-crlf-after-headers", format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"audio\"RIFF").into_bytes()),
        ("form-huge-text-field", form(&[("patient_reference", &"Smith John ".repeat(200_000))], &[(AUDIO_PART, &tone())])),
        ("form-too-large", form(&[], &[(AUDIO_PART, &vec![0u8; 3 << 20])])),
        ("form-header-injection", form(&[], &[("Content-Disposition: form-data; name=\"audio\"; filename=\"a\r\nX-Smith: John.wav\"", &tone())])),
    ];
    for (id, body) in bodies {
        add(id, Some(String::new()), Some(&multipart), Vec::new(), body);
    }
    // Headers.
    for (id, name, value) in [
        (
            "header-idempotency-key-empty",
            "Idempotency-Key",
            String::new(),
        ),
        (
            "header-idempotency-key-256",
            "Idempotency-Key",
            "k".repeat(256),
        ),
        (
            "header-idempotency-key-space",
            "Idempotency-Key",
            "Smith John".to_owned(),
        ),
    ] {
        let audio = tone();
        add(
            id,
            Some(String::new()),
            Some(&multipart),
            vec![(name, value)],
            upload(&audio),
        );
    }
    // Accepted (the audio looks like audio), then dead-lettered by decode.
    let flac = fixture("jfk_16k_mono.flac");
    for (id, audio) in [
        (
            "upload-wav-magic-garbage",
            [b"RIFF\x24\0\0\0WAVE".to_vec(), noise(600, 2000)].concat(),
        ),
        (
            "upload-wav-rate-0",
            wav_file(1, 0, 1, 16, &tone_pcm(16_000, 0.1, 1, 700.0)),
        ),
        ("upload-flac-header-only", flac[..42].to_vec()),
        (
            "upload-ogg-magic-garbage",
            [b"OggS".to_vec(), noise(601, 3000)].concat(),
        ),
        (
            "upload-mp3-id3-garbage",
            [b"ID3\x04\0\0\0\0\0\0".to_vec(), noise(602, 3000)].concat(),
        ),
    ] {
        add(
            id,
            Some(String::new()),
            Some(&multipart),
            Vec::new(),
            upload(&audio),
        );
    }
    // Odd but valid: these complete.
    let odd = wav_file(1, 96_000, 2, 16, &tone_pcm(96_000, 0.2, 2, 777.0));
    add(
        "upload-valid-96k-stereo",
        Some(String::new()),
        Some(&multipart),
        Vec::new(),
        upload(&odd),
    );
    let mut second = tone();
    second.extend_from_slice(&[0; 2]);
    add(
        "upload-valid-two-audio-parts",
        Some(String::new()),
        Some(&multipart),
        Vec::new(),
        form(&[], &[(AUDIO_PART, b"not audio"), (AUDIO_PART, &second)]),
    );
    // Other routes.
    for (id, method, path) in [
        ("route-job-id-garbage", "GET", "/v1/jobs/Smith%20John"),
        (
            "route-job-id-traversal",
            "GET",
            "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        ),
        (
            "route-transcript-format-bogus",
            "GET",
            "/v1/jobs/0123/transcript?format=exe",
        ),
        ("route-list-status-bogus", "GET", "/v1/jobs?status=Smith"),
        (
            "route-list-limit-huge",
            "GET",
            "/v1/jobs?limit=18446744073709551616",
        ),
        ("route-list-cursor-garbage", "GET", "/v1/jobs?cursor=%FF%FE"),
        ("route-delete-as-submitter", "DELETE", "/v1/jobs/0123"),
        ("route-put-jobs", "PUT", "/v1/jobs"),
    ] {
        cases.push(ApiCase {
            id: id.to_owned(),
            method,
            path: path.to_owned(),
            authorization: Some(String::new()),
            headers: Vec::new(),
            body: Vec::new(),
        });
    }
    cases
}

//! Fuzzing of what reads untrusted input (issue 19, item 3): the audio
//! decoder, the broker envelope reader, the folder source's sidecars, the
//! `Authorization` header with its JWT, and the multipart upload intake of
//! `POST /v1/jobs`.
//!
//! The loop is `common/fuzz.rs` (random havoc mutation of seed inputs on the
//! stable toolchain; why not cargo-fuzz or afl.rs is said there). `make test`
//! runs each target for `MMT_FUZZ_SECONDS` (3 s by default: half with a fixed
//! seed, half with a random one); the long runs whose figures are in
//! `tests/corpus/README.md` set `MMT_FUZZ_EXECS=1000000`. Every input a run
//! finds is saved under `target/fuzz-findings/` and belongs, once fixed, in
//! `tests/corpus/`.
//!
//! Besides "no panic, no hang", each target checks what the product
//! promises of its answer: decoded samples are finite and in [-1, 1]; a
//! refused envelope or sidecar names no value it was sent (canaries are
//! planted in the seeds); an HTTP answer is never a 5xx and never quotes a
//! canary.

// The helpers below are test code too: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/fuzz.rs"]
mod fuzz;
#[path = "common/scan.rs"]
mod scan;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request};
use base64::Engine as _;
use common::{claims, root, wav_file};
use fuzz::fuzz;
use mmt_api::auth::{sign_hs256, KeyRing};
use mmt_api::{ApiConfig, AppState};
use mmt_connectors::envelope::{EnvelopeReader, MessageContext};
use mmt_core::telemetry::Metrics;
use mmt_pipeline::run::source::DirectorySource;
use mmt_pipeline::run::OutputPaths;
use mmt_pipeline::serve::{IntakeChoice, ServiceControl};
use mmt_pipeline::Config;
use scan::CANARY_PARTS;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt;

/// Whether `text` quotes any part of a planted canary.
fn quotes_a_canary(text: &str) -> Option<&'static str> {
    CANARY_PARTS
        .iter()
        .copied()
        .find(|part| text.contains(part))
}

/// A scratch folder in memory where the system has one (the API targets
/// write an upload, a job row and an audit line per execution).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

// ------------------------------------------------------------ audio decoder

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("whisper/tests/fixtures").join(name)).unwrap()
}

/// A short tone as 16-bit samples.
fn tone(rate: u32, frames: usize, channels: u16) -> Vec<u8> {
    (0..frames)
        .flat_map(|i| {
            let s =
                ((i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 8000.0) as i16;
            std::iter::repeat_n(s, channels as usize).flat_map(i16::to_le_bytes)
        })
        .collect()
}

/// Every container and codec the decoder reads: the repository's fixtures
/// (the compressed ones cut to their first 8 KiB, headers and a few
/// packets), and small WAVs of each sample format, rate and layout.
pub fn audio_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = [
        "jfk_16k_mono.flac",
        "jfk_16k_mono_vorbis.ogg",
        "jfk_44k_mono.mp3",
        "jfk_opus.opus",
        "jfk_s16_22k_mono.wav",
        "jfk_f32_44k_stereo.wav",
    ]
    .iter()
    .map(|name| {
        let mut bytes = fixture(name);
        bytes.truncate(8 << 10);
        bytes
    })
    .collect();
    seeds.push(wav_file(1, 16_000, 1, 16, &tone(16_000, 1600, 1)));
    seeds.push(wav_file(1, 8_000, 1, 16, &tone(8_000, 800, 1)));
    seeds.push(wav_file(1, 11_025, 2, 16, &tone(11_025, 1102, 2)));
    seeds.push(wav_file(1, 96_000, 6, 16, &tone(96_000, 960, 6)));
    let bytes8: Vec<u8> = tone(22_050, 1000, 1)
        .chunks(2)
        .map(|s| (s[1] as i8 as i16 + 128) as u8)
        .collect();
    seeds.push(wav_file(1, 22_050, 1, 8, &bytes8));
    let bytes24: Vec<u8> = tone(48_000, 1000, 2)
        .chunks(2)
        .flat_map(|s| [0, s[0], s[1]])
        .collect();
    seeds.push(wav_file(1, 48_000, 2, 24, &bytes24));
    let float: Vec<u8> = (0..2000)
        .flat_map(|i| ((i as f32 * 0.05).sin() * 0.5).to_le_bytes())
        .collect();
    seeds.push(wav_file(3, 44_100, 1, 32, &float));
    seeds.push(wav_file(7, 8_000, 1, 8, &[0x55; 800]));
    seeds.push(wav_file(6, 8_000, 1, 8, &[0xd5; 800]));
    seeds
}

const AUDIO_TOKENS: &[&[u8]] = &[
    b"RIFF",
    b"RIFX",
    b"WAVE",
    b"fmt ",
    b"data",
    b"LIST",
    b"fact",
    b"OggS",
    b"fLaC",
    b"ID3",
    b"\xff\xfb",
    b"\xff\xf3",
    b"OpusHead",
    b"OpusTags",
    b"\x01vorbis",
    b"\x03vorbis",
    b"\x05vorbis",
    b"\xfe\xff",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
];

const HINTS: [Option<&str>; 6] = [
    None,
    Some("wav"),
    Some("mp3"),
    Some("flac"),
    Some("ogg"),
    Some("opus"),
];

#[test]
fn audio_decoder() {
    fuzz(
        "audio_decoder",
        audio_seeds(),
        AUDIO_TOKENS,
        64 << 10,
        |input| {
            let hint = HINTS[input.len() % HINTS.len()];
            let mut bad_sample = false;
            let mut handed = 0u64;
            let result = mmt_whisper::audio::stream_bytes(
                input.to_vec(),
                hint,
                Some(600),
                &mut |block: &[f32]| {
                    handed += block.len() as u64;
                    bad_sample |= block.iter().any(|s| !s.is_finite() || s.abs() > 1.0);
                    Ok(())
                },
            );
            if bad_sample {
                return Err("a decoded sample is not finite or outside [-1, 1]".into());
            }
            match result {
                Ok(samples) if samples != handed => {
                    Err(format!("reported {samples} samples, handed {handed}"))
                }
                Ok(_) => Ok(()),
                Err(err) if err.to_string().trim().is_empty() => Err("an empty error".into()),
                Err(_) => Ok(()),
            }
        },
    );
}

// ------------------------------------------------------------ envelopes

/// Envelopes of every shape the reader accepts, canaries where a value may
/// be PHI (the reason of a refusal must never quote them).
fn envelope_seeds() -> Vec<Vec<u8>> {
    let wav =
        base64::engine::general_purpose::STANDARD.encode(wav_file(1, 16_000, 1, 16, &[0; 64]));
    [
        format!(r#"{{"tenant":"clinic-a","audio":{{"inline":{{"data":"{wav}"}}}}}}"#),
        format!(
            r#"{{"version":1,"tenant":"clinic-a","client_reference":"Smith John","audio":{{"inline":{{"data":"{wav}","format":"wav"}}}},"patient_reference":"Patient/MRN-4471-CANARY","encounter_reference":"Encounter/e-1958-03-12","priority":9}}"#
        ),
        r#"{"tenant":"clinic-a","audio":{"reference":{"url":"2024/a.wav","format":"WAV"}},"patient_reference":"Patient/p-1"}"#.to_owned(),
        r#"{"tenant":"clinic-a","audio":{"reference":{"url":"file:///refs/clinic-a/Smith John.wav"}}}"#.to_owned(),
        r#"{"tenant":"Smith John","audio":{"inline":{"data":"UklGRg==","format":"1958-03-12"}},"priority":"Smith John"}"#.to_owned(),
        r#"{"tenant":"clinic-a","audio":{"inline":{"data":"@@@"}},"patient_reference":"Smith John","Smith John":[1958,3,12]}"#.to_owned(),
        r#"[{"tenant":"clinic-a"},null,true,1e400,"\ud800",{"a":{"b":{"c":[[[[]]]]}}}]"#.to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"0.5",
    b"18446744073709551616",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"\\",
    b"\xff\xfe",
    b"\xc3\x28",
    b"\"tenant\"",
    b"\"audio\"",
    b"\"inline\"",
    b"\"reference\"",
    b"\"data\"",
    b"\"format\"",
    b"\"url\"",
    b"\"version\"",
    b"\"priority\"",
    b"\"patient_reference\"",
    b"\"encounter_reference\"",
    b"\"client_reference\"",
    b"\"patient\"",
    b"\"encounter\"",
    b"\"Smith John\"",
    b"\"Patient/MRN-4471-CANARY\"",
    b"\"../../etc/passwd\"",
    b"\"/dev/zero\"",
    b"\"'; DROP TABLE jobs; --\"",
    b"\"<script>alert(1)</script>\"",
    b"\"$(rm -rf /)\"",
];

#[test]
fn envelope_reader() {
    let refs = scratch();
    std::fs::create_dir_all(refs.path().join("clinic-a/2024")).unwrap();
    std::fs::write(
        refs.path().join("clinic-a/2024/a.wav"),
        wav_file(1, 16_000, 1, 16, &[0; 64]),
    )
    .unwrap();
    let reader = EnvelopeReader::new(Some(refs.path().to_owned()), "fallback");
    fuzz(
        "envelope_reader",
        envelope_seeds(),
        JSON_TOKENS,
        16 << 10,
        |body| {
            let record = reader.read(
                body,
                MessageContext {
                    message_id: "m-1".into(),
                    ..MessageContext::default()
                },
            );
            match &record.read_error {
                Some(reason) => {
                    if let Some(part) = quotes_a_canary(reason) {
                        return Err(format!("the reason quotes {part:?}: {reason}"));
                    }
                    // A refused envelope keeps no tenant; one whose envelope
                    // was valid and whose audio was not keeps its valid tenant.
                    if record.tenant != "fallback" && !mmt_core::input::is_tenant(&record.tenant) {
                        return Err("a refused envelope kept an invalid tenant".into());
                    }
                    if reason.trim().is_empty() {
                        return Err("an empty reason".into());
                    }
                }
                None => {
                    if !mmt_core::input::is_tenant(&record.tenant) {
                        return Err("an accepted envelope with an invalid tenant".into());
                    }
                }
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------ sidecars

fn sidecar_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"tenant":"clinic-a","patient":"Patient/123","encounter":"Encounter/9"}"#,
        r#"{"tenant":"Smith John"}"#,
        r#"{"patient":"Patient/MRN-4471-CANARY","encounter":"1958-03-12"}"#,
        r#"{"patient":["Smith John"],"tenant":{"name":"Smith John"}}"#,
        r#"{"Smith John":"1958-03-12"}"#,
        r#"{}"#,
    ]
    .into_iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn sidecar_reader() {
    let dir = scratch();
    let audio = dir.path().join("a.wav");
    std::fs::write(&audio, wav_file(1, 16_000, 1, 16, &[0; 64])).unwrap();
    let sidecar = dir.path().join("a.wav.json");
    let source = DirectorySource::new(dir.path(), "fallback");
    fuzz(
        "sidecar_reader",
        sidecar_seeds(),
        JSON_TOKENS,
        16 << 10,
        |bytes| {
            std::fs::write(&sidecar, bytes).map_err(|e| e.to_string())?;
            match source.read(&audio, 0) {
                Err(unreadable) => {
                    if let Some(part) = quotes_a_canary(&unreadable.reason) {
                        return Err(format!("the reason quotes {part:?}: {}", unreadable.reason));
                    }
                }
                Ok(record) => {
                    if !mmt_core::input::is_tenant(&record.tenant) {
                        return Err("an accepted sidecar with an invalid tenant".into());
                    }
                    let valid = |value: &Option<String>, kind| {
                        value
                            .as_deref()
                            .is_none_or(|v| mmt_core::input::is_fhir_reference(v, kind))
                    };
                    if !valid(&record.patient_reference, "Patient")
                        || !valid(&record.encounter_reference, "Encounter")
                    {
                        return Err("an accepted sidecar with an invalid reference".into());
                    }
                }
            }
            Ok(())
        },
    );
}

// ------------------------------------------------------------ the API

const SECRET: &str = "fuzz-test-secret-0123456789abcdef-01234";
const BOUNDARY: &str = "mmt-fuzz-boundary";

/// The API over a real job control (SQLite store, upload folder) in a
/// scratch folder, the dataflow not running; limits out of the way so that
/// every request reaches the code under test.
struct Api {
    router: axum::Router,
    runtime: tokio::runtime::Runtime,
    // Dropped after the router, outside the runtime (the store owns one).
    _control: Arc<ServiceControl>,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Self {
        let dir = scratch();
        let settings = Config::from_vars(
            [
                ("MMT_API_MAX_QUEUED_JOBS", "100000000"),
                ("MMT_API_MAX_QUEUED_PER_TENANT", "100000000"),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned())),
        )
        .unwrap();
        let paths = OutputPaths::resolve(&settings, dir.path());
        let metrics = Metrics::new().unwrap();
        let (_resources, control) = mmt_pipeline::serve::open(
            &settings,
            &paths,
            &dir.path().join("uploads"),
            1,
            IntakeChoice::Embedded,
            &metrics,
        )
        .unwrap();
        let keys = Arc::new(KeyRing::new(Some(SECRET), None).unwrap());
        let config = ApiConfig {
            max_upload_bytes: 256 << 10,
            tenant_requests_per_second: 1_000_000,
            tenant_burst: 1_000_000,
            ..ApiConfig::default()
        };
        let state = AppState::new(control.clone(), keys, config, metrics);
        Self {
            router: mmt_api::router(state),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            _control: control,
            _dir: dir,
        }
    }

    /// Sends `request`; `Err` when the answer is a 5xx or quotes a canary.
    fn check(&self, request: Request<Body>) -> Result<u16, String> {
        let router = self.router.clone();
        let (status, body) = self.runtime.block_on(async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            (status, body)
        });
        let text = String::from_utf8_lossy(&body);
        if status >= 500 {
            return Err(format!("answered {status}: {text}"));
        }
        // An accepted job shows its owner the (valid) references it was
        // given; a refusal quotes nothing it was sent.
        if status >= 400 {
            if let Some(part) = quotes_a_canary(&text) {
                return Err(format!("the answer ({status}) quotes {part:?}: {text}"));
            }
        }
        Ok(status)
    }
}

fn token() -> String {
    sign_hs256(SECRET, &claims("clinic-a", &["submitter", "reader"], 3600)).unwrap()
}

/// Keeps the bytes a header value may hold (what a client can send).
fn header_value(bytes: &[u8]) -> HeaderValue {
    let kept: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .collect();
    HeaderValue::from_bytes(&kept).unwrap()
}

/// A token whose claims are `payload` as it is, signed with the server's
/// key: what reaches the claims' parser after the signature checks out.
fn signed_with_payload(payload: &[u8]) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!(
        "{}.{}",
        engine.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        engine.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

#[test]
fn authorization_header() {
    let api = Api::new();
    let valid = token();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = valid.split('.').collect();
    let payload = engine.decode(parts[1]).unwrap();
    let none = format!(
        "{}.{}.",
        engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let rs256 = format!(
        "{}.{}.{}",
        engine.encode(br#"{"alg":"RS256","kid":"Smith John","typ":"JWT"}"#),
        parts[1],
        parts[2]
    );
    let expired = sign_hs256(SECRET, &claims("clinic-a", &["reader"], -3600)).unwrap();
    let canary_tenant = sign_hs256(SECRET, &claims("Smith John", &["reader"], 3600)).unwrap();
    // A first byte of 'R' means "the rest, as the header"; 'C' means "the
    // rest, as the claims of a token signed with the server's key".
    let mut seeds: Vec<Vec<u8>> = [
        format!("RBearer {valid}"),
        format!("Rbearer {valid}"),
        format!("RBearer  {expired} "),
        format!("RBearer {none}"),
        format!("RBearer {rs256}"),
        format!("RBearer {canary_tenant}"),
        "RBasic U21pdGggSm9objoxOTU4LTAzLTEy".to_owned(),
        "RBearer Smith John".to_owned(),
        "RBearer a.b.c".to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let mut claims_seed = b"C".to_vec();
    claims_seed.extend_from_slice(&payload);
    seeds.push(claims_seed);
    seeds.push(
        br#"C{"sub":"Smith John","tenant":"clinic-a","roles":["admin",7,null],"exp":99999999999,"nbf":"1958-03-12","aud":["x"]}"#
            .to_vec(),
    );
    let tokens: &[&[u8]] = &[
        b"Bearer ",
        b".",
        b"eyJ",
        b"\"alg\"",
        b"\"none\"",
        b"\"HS256\"",
        b"\"RS256\"",
        b"\"kid\"",
        b"\"exp\"",
        b"\"nbf\"",
        b"\"sub\"",
        b"\"tenant\"",
        b"\"roles\"",
        b"\"admin\"",
        b"\"aud\"",
        b"null",
        b"-1",
        b"1e999",
        b"18446744073709551616",
        b"[",
        b"]",
        b"{",
        b"}",
        b"==",
    ];
    fuzz("authorization_header", seeds, tokens, 4 << 10, |input| {
        let value = match input.split_first() {
            Some((b'C', payload)) => {
                header_value(format!("Bearer {}", signed_with_payload(payload)).as_bytes())
            }
            Some((_, rest)) => header_value(rest),
            None => header_value(b""),
        };
        let request = Request::get("/v1/jobs")
            .header(header::AUTHORIZATION, value)
            .body(Body::empty())
            .unwrap();
        match api.check(request)? {
            200 | 401 | 403 => Ok(()),
            other => Err(format!("unexpected status {other}")),
        }
    });
}

/// A form: text fields, then the audio part.
fn form(fields: &[(&str, &str)], part: &str, audio: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}\r\n{part}\r\n\r\n").as_bytes());
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

#[test]
fn multipart_intake() {
    let api = Api::new();
    let bearer = format!("Bearer {}", token());
    let audio = wav_file(1, 16_000, 1, 16, &tone(16_000, 400, 1));
    let audio_part = "Content-Disposition: form-data; name=\"audio\"; filename=\"Smith John.wav\"\r\nContent-Type: audio/wav";
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    // Each seed: the request's Content-Type, a newline, the body.
    let seed = |content_type: &str, body: Vec<u8>| {
        let mut seed = content_type.as_bytes().to_vec();
        seed.push(b'\n');
        seed.extend_from_slice(&body);
        seed
    };
    let seeds = vec![
        seed(&content_type, form(&[], audio_part, &audio)),
        seed(
            &content_type,
            form(
                &[
                    ("patient_reference", "Patient/MRN-4471-CANARY"),
                    ("encounter_reference", "Encounter/e-1"),
                    ("priority", "9"),
                ],
                audio_part,
                &audio,
            ),
        ),
        seed(
            &content_type,
            form(
                &[("patient_reference", "Smith John"), ("priority", "1958-03-12")],
                "Content-Disposition: form-data; name=\"audio\"; filename=\"../../a.wav\"\r\nContent-Type: audio/Smith John",
                b"RIFF\x00\x00\x00\x00WAVE",
            ),
        ),
        seed(
            &content_type,
            form(
                &[("Smith John", "1")],
                "Content-Disposition: form-data; name=\"audio\"\r\nContent-Type: application/octet-stream",
                &fixture("jfk_opus.opus")[..2048],
            ),
        ),
        seed(
            "multipart/form-data; boundary=\"quoted boundary\"; charset=utf-8",
            b"--quoted boundary\r\nContent-Disposition: form-data; name=\"audio\"; filename*=UTF-8''Smith%20John.wav\r\n\r\nfLaC\x00\x00\r\n--quoted boundary--".to_vec(),
        ),
        seed("application/json", br#"{"audio_reference":"/audio/Smith John.wav","priority":1}"#.to_vec()),
    ];
    let tokens: &[&[u8]] = &[
        b"\r\n",
        b"--",
        BOUNDARY.as_bytes(),
        b"Content-Disposition: form-data; ",
        b"name=\"audio\"",
        b"name=\"priority\"",
        b"name=\"patient_reference\"",
        b"name=\"callback_url\"",
        b"filename=\"\"",
        b"Content-Type: ",
        b"audio/wav",
        b"multipart/mixed",
        b"; boundary=",
        b"RIFF",
        b"WAVE",
        b"OggS",
        b"fLaC",
        b"ID3",
        b"\"",
        b";",
        b"\x00",
        b"\xff",
    ];
    fuzz("multipart_intake", seeds, tokens, 64 << 10, |input| {
        let split = input
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(input.len());
        let (content_type, body) = (&input[..split], input.get(split + 1..).unwrap_or(&[]));
        let request = Request::post("/v1/jobs")
            .header(header::AUTHORIZATION, &bearer)
            .header(header::CONTENT_TYPE, header_value(content_type))
            .body(Body::from(body.to_vec()))
            .unwrap();
        api.check(request).map(|_| ())
    });
}

/// The findings folder is where the loop says it is.
#[test]
fn a_finding_is_saved_and_fails_the_run() {
    let report = fuzz::run(
        "self_test",
        &fuzz::Budget {
            seconds: 0.0,
            execs: Some(4),
            seed: Some(1),
        },
        vec![b"seed".to_vec()],
        &[],
        16,
        |_| Err("found".into()),
    );
    assert_eq!(report.execs, 4);
    assert_eq!(report.findings.len(), 4, "{:?}", report.findings);
    let saved: PathBuf = report.findings[0]
        .split("input saved to ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .map(PathBuf::from)
        .unwrap();
    assert!(saved.is_file(), "{}", saved.display());
    let panicking = fuzz::run(
        "self_test_panic",
        &fuzz::Budget {
            seconds: 0.0,
            execs: Some(2),
            seed: Some(2),
        },
        vec![b"x".to_vec()],
        &[],
        16,
        |_| panic!("a bug"),
    );
    assert_eq!(panicking.findings.len(), 2);
    assert!(panicking.findings[0].starts_with("panic"));
    let _ = std::fs::remove_file(saved);
}

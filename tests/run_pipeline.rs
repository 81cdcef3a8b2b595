//! End-to-end tests of `mmt run`: the dataflow on the embedded sinks.

mod common;

use common::{
    distinct_recordings, documents, model_ready, read_lines, read_manifest, root, wav_bytes,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mmt_run(input: &Path, out: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .args(["run", "--no-progress", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .current_dir(root())
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE");
    command
}

fn corrupt_files(dir: &Path) -> usize {
    let cases: [(&str, &[u8]); 3] = [
        ("empty.wav", b""),
        ("notes.mp3", b"this is a text file pretending to be audio\n"),
        ("broken.flac", b"fLaC\0\0\0\x22garbage garbage garbage"),
    ];
    for (name, bytes) in cases {
        std::fs::write(dir.join(name), bytes).expect("write corrupt file");
    }
    cases.len()
}

#[test]
fn duplicates_make_one_document_and_corrupt_files_one_dead_letter_each() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    // Every clip of the eval dictation set twice when it is here, else the samples twice.
    let clips: Vec<PathBuf> = match common::eval_set("dictation") {
        Some(dir) => read_manifest(&dir)
            .iter()
            .map(|e| dir.join(&e.audio))
            .collect(),
        None => read_manifest(&root().join("samples"))
            .iter()
            .map(|e| root().join("samples").join(&e.audio))
            .collect(),
    };
    for clip in &clips {
        let name = clip
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        std::fs::copy(clip, input.path().join(format!("{name}_a.wav"))).expect("copy");
        std::fs::copy(clip, input.path().join(format!("{name}_b.wav"))).expect("copy");
    }
    let corrupt = corrupt_files(input.path());

    let output = mmt_run(input.path(), out.path()).output().expect("mmt run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "dead letters exit 2\n{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let docs = documents(out.path());
    let ids: HashSet<&str> = docs.iter().map(|d| d["id"].as_str().expect("id")).collect();
    assert_eq!(
        docs.len(),
        clips.len(),
        "one document per distinct audio\n{stdout}"
    );
    assert_eq!(ids.len(), clips.len());
    for doc in &docs {
        assert_eq!(doc["resourceType"], "DocumentReference");
        assert!(doc["content"][0]["attachment"]["data"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
    }

    let letters = read_lines(&out.path().join("dlq.jsonl"));
    assert_eq!(letters.len(), corrupt, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["stage"], "decode");
        let reason = letter["reason"].as_str().expect("reason");
        assert!(
            reason.len() > 8 && !reason.contains('\n'),
            "unreadable reason {reason:?}"
        );
    }

    let audit = read_lines(&out.path().join("audit.jsonl"));
    let by_action = |action: &str| audit.iter().filter(|e| e["action"] == action).count();
    assert_eq!(by_action("job_completed"), clips.len());
    assert_eq!(by_action("job_duplicate"), clips.len());
    assert_eq!(by_action("job_dead_lettered"), corrupt);
    // One reception per job record: the second copy of a clip is the same job.
    assert_eq!(by_action("job_received"), clips.len() + corrupt);
    assert!(
        stdout.contains(&format!("{} transcribed", clips.len())),
        "{stdout}"
    );

    // A second run over the same folder finds everything done and writes nothing new.
    let again = mmt_run(input.path(), out.path()).output().expect("mmt run");
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 transcribed"));
    assert_eq!(documents(out.path()).len(), clips.len());
    assert_eq!(
        read_lines(&out.path().join("audit.jsonl")).len(),
        audit.len()
    );
    let trail = out.path().join("audit.jsonl");
    let (status, verified, _) =
        common::mmt(&["audit", "verify", "--file", trail.to_str().expect("utf-8")]);
    assert!(status.success(), "{verified}");
}

#[test]
fn killed_runs_resume_and_every_job_completes_exactly_once() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let recordings = distinct_recordings(20);
    for (name, bytes) in &recordings {
        std::fs::write(input.path().join(name), bytes).expect("write");
    }
    // SIGKILL the run at pseudo-random points: once during start-up, then each
    // time a few more documents have been committed (so always mid-run).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next_random = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let mut partial_kills = 0;
    for round in 0..5 {
        let before = documents(out.path()).len();
        let target = before + 1 + next_random(3) as usize;
        // Unpacked, jobs complete a few at a time, so the kills land between
        // commits; packed, a window completes several jobs at once and the
        // run is over before the third kill.
        let mut child = mmt_run(input.path(), out.path())
            .args(["--batch-size", "2", "--no-packing"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        let startup_kill = Duration::from_millis(200 + next_random(800));
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            let reached = if round == 0 {
                started.elapsed() >= startup_kill
            } else {
                documents(out.path()).len() >= target
            };
            if reached || started.elapsed() > Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(next_random(300)));
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        let after = documents(out.path()).len();
        if after > 0 && after < recordings.len() {
            partial_kills += 1;
        }
        eprintln!(
            "round {round}: killed after {:?} with {after} documents",
            started.elapsed()
        );
    }
    assert!(
        partial_kills >= 2,
        "the kills did not interrupt the run mid-way"
    );
    let last = mmt_run(input.path(), out.path())
        .output()
        .expect("final run");
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );

    let docs = documents(out.path());
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for doc in &docs {
        *per_id
            .entry(doc["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), recordings.len(), "every job has a document");
    assert!(
        per_id.values().all(|&n| n == 1),
        "no duplicate documents: {per_id:?}"
    );
    let completed: Vec<String> = read_lines(&out.path().join("audit.jsonl"))
        .iter()
        .filter(|e| e["action"] == "job_completed")
        .map(|e| e["job_id"].as_str().expect("job id").to_owned())
        .collect();
    let distinct: HashSet<&String> = completed.iter().collect();
    assert_eq!(
        completed.len(),
        recordings.len(),
        "one completion event per job"
    );
    assert_eq!(distinct.len(), recordings.len());
    assert!(read_lines(&out.path().join("dlq.jsonl")).is_empty());
}

#[test]
fn silence_is_never_sent_to_the_model() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        input.path().join("silence.wav"),
        wav_bytes(&vec![0i16; 16_000 * 20]),
    )
    .expect("write");
    let output = mmt_run(input.path(), out.path()).output().expect("mmt run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs = documents(out.path());
    assert_eq!(docs.len(), 1);
    // The document exists (the job completed) but holds no hallucinated text.
    let data = docs[0]["content"][0]["attachment"]["data"]
        .as_str()
        .unwrap_or("");
    assert!(data.is_empty(), "silence produced text: {data}");
}

#[test]
fn follow_mode_picks_up_new_files_and_stops_cleanly_on_sigterm() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let child = mmt_run(input.path(), out.path())
        .arg("--follow")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The file arrives after the run started watching.
    std::thread::sleep(Duration::from_millis(500));
    let sample = root().join("samples/librispeech_61-70968-0002.wav");
    std::fs::copy(&sample, input.path().join("late.wav")).expect("copy");
    let started = Instant::now();
    while documents(out.path()).is_empty() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        documents(out.path()).len(),
        1,
        "the new file was transcribed"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let output = child.wait_with_output().expect("exit");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 transcribed"));
}

#[test]
fn fast_decoding_gives_one_segment_per_chunk_and_no_fallback() {
    if !model_ready() {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let output = mmt_run(&root().join("samples"), out.path())
        .args([
            "--independent-chunks",
            "--no-fallback",
            "--without-timestamps",
        ])
        .output()
        .expect("mmt run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(" 0 windows decoded again at a higher temperature"),
        "{stderr}"
    );
    let completed: Vec<serde_json::Value> = read_lines(&out.path().join("audit.jsonl"))
        .into_iter()
        .filter(|event| event["action"] == "job_completed")
        .collect();
    assert_eq!(
        completed.len(),
        read_manifest(&root().join("samples")).len()
    );
    // Every sample is one chunk (under 30 s, no long pause): without
    // timestamps it is one segment, where timed decoding splits the longer
    // samples in two.
    for event in &completed {
        assert_eq!(event["detail"]["segments"], "1", "{event}");
    }
    for doc in documents(out.path()) {
        let data = doc["content"][0]["attachment"]["data"]
            .as_str()
            .unwrap_or("");
        assert!(!data.is_empty(), "a sample lost its text");
    }
}

/// The 2.5 s FLAC fixture with its declared length zeroed ("unknown", as a live
/// encoder leaves it): only decoding can find out how long it is.
fn flac_of_unknown_length() -> Vec<u8> {
    let mut bytes =
        std::fs::read(root().join("whisper/tests/fixtures/jfk_16k_mono.flac")).expect("fixture");
    // STREAMINFO starts at byte 8; its 36-bit total is in its bytes 13 (low nibble) to 17.
    bytes[8 + 13] &= 0xF0;
    bytes[8 + 14..8 + 18].fill(0);
    bytes
}

#[test]
fn recordings_over_the_length_limit_are_dead_lettered_naming_the_limit() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    // A minute of silence whose header declares its length, a stream that only
    // runs past the limit while it decodes, and a 7.9 s dictation.
    std::fs::write(
        input.path().join("doe_jane_long.wav"),
        wav_bytes(&vec![0i16; 16_000 * 60]),
    )
    .expect("write");
    std::fs::write(
        input.path().join("doe_jane_live.flac"),
        flac_of_unknown_length(),
    )
    .expect("write");
    std::fs::copy(
        root().join("samples/dict_001.wav"),
        input.path().join("dict.wav"),
    )
    .expect("copy");

    let started = Instant::now();
    let output = mmt_run(input.path(), out.path())
        .env("MMT_MAX_AUDIO_SECONDS", "2")
        .output()
        .expect("mmt run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "dead letters exit 2\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let letters = read_lines(&out.path().join("dlq.jsonl"));
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["stage"], "decode");
        let reason = letter["reason"].as_str().expect("reason");
        assert!(reason.contains("of 2 s"), "names the limit: {reason}");
        assert!(reason.contains("MMT_MAX_AUDIO_SECONDS"), "{reason}");
        assert!(!reason.contains("doe_jane"), "no PHI: {reason}");
    }
    assert!(
        letters.iter().any(|l| l["reason"]
            .as_str()
            .is_some_and(|r| r.contains("declares 60 s"))),
        "the header's claim is named: {letters:?}"
    );
    assert_eq!(documents(out.path()).len(), 0);
    assert!(started.elapsed() < Duration::from_secs(300), "liveness");
}

#[test]
fn files_holding_phi_are_owner_only_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        root().join("samples/dict_001.wav"),
        input.path().join("Smith_John.wav"),
    )
    .expect("copy");
    corrupt_files(input.path());
    let scratch = tempfile::tempdir().expect("tempdir");
    // A folder `mmt run` makes itself, under a permissive umask: the modes
    // come from MMT, not from the environment.
    let out = scratch.path().join("out");
    let run = mmt_run(input.path(), &out);
    let output = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(run.get_program())
        .args(run.get_args())
        .current_dir(root())
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .output()
        .expect("mmt run");
    assert_eq!(
        output.status.code(),
        Some(2),
        "dead letters exit 2: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    };
    for dir in [out.clone(), out.join("fhir")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let mut files = vec![
        out.join("mmt.db"),
        out.join("fhir/DocumentReference.ndjson"),
        out.join("dlq.jsonl"),
        out.join("audit.jsonl"),
    ];
    // SQLite removes its -wal and -shm files when the last connection closes.
    files.extend(
        ["mmt.db-wal", "mmt.db-shm"]
            .map(|name| out.join(name))
            .into_iter()
            .filter(|path| path.exists()),
    );
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    // Nothing else in the output was left readable by others.
    for entry in std::fs::read_dir(&out).expect("out") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path) & 0o077, 0, "{}", path.display());
    }
}

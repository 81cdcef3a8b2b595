//! The audit trail as an operator meets it: `mmt audit verify` on a real
//! trail (written by the file sink, rotated), tampered with by hand; and
//! `ENV=prod mmt check` on `AUDIT_LOG_FILE` and an RS256-only deployment.

// Test code: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;

use mmt_connectors::files::chain::rotated_name;
use mmt_connectors::AuditLogSink;
use mmt_core::job::{AuditAction, AuditEvent, JobId};
use std::path::Path;
use std::process::Command;

fn event(n: u32) -> AuditEvent {
    AuditEvent {
        at: 1_700_000_000 + i64::from(n),
        action: AuditAction::JobReceived,
        job_id: JobId(format!("{n:032x}")),
        tenant: "clinic-a".into(),
        correlation_id: format!("{n:016x}"),
        actor: "pipeline".into(),
        detail: Default::default(),
    }
}

/// Writes `n` events through the real sink, rotating every `rotate_at` bytes.
fn write_trail(path: &Path, n: u32, rotate_at: Option<u64>) {
    let mut sink = AuditLogSink::open_rotating(path, rotate_at).unwrap();
    for i in 0..n {
        assert!(sink.record_event(&event(i)).unwrap());
    }
}

fn verify(path: &Path) -> (bool, String) {
    let (status, stdout, stderr) =
        common::mmt(&["audit", "verify", "--file", path.to_str().unwrap()]);
    (status.success(), format!("{stdout}{stderr}"))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn verify_catches_an_edited_a_deleted_and_a_swapped_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_trail(&path, 6, None);
    let original = lines(&path);
    let (intact, output) = verify(&path);
    assert!(intact, "{output}");
    assert!(
        output.contains("intact: 6 line(s) in 1 file(s)"),
        "{output}"
    );

    // Edited: line 3 names another tenant; line 4 no longer chains to it.
    let mut edited = original.clone();
    edited[2] = edited[2].replace("clinic-a", "clinic-b");
    rewrite(&path, &edited);
    let (intact, output) = verify(&path);
    assert!(!intact, "{output}");
    assert!(
        output.contains("BROKEN") && output.contains("line 4:"),
        "{output}"
    );
    assert!(
        output.contains(path.to_str().unwrap()),
        "names the file: {output}"
    );

    // Deleted: line 3 gone; the line after it (now line 3) names it.
    let mut deleted = original.clone();
    deleted.remove(2);
    rewrite(&path, &deleted);
    let (intact, output) = verify(&path);
    assert!(!intact, "{output}");
    assert!(output.contains("line 3:"), "{output}");

    // Swapped: lines 2 and 3 change places.
    let mut swapped = original.clone();
    swapped.swap(1, 2);
    rewrite(&path, &swapped);
    let (intact, output) = verify(&path);
    assert!(!intact, "{output}");
    assert!(output.contains("line 2:"), "{output}");

    rewrite(&path, &original);
    assert!(verify(&path).0);
}

#[test]
fn verify_follows_the_chain_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let line = {
        let probe = dir.path().join("probe.jsonl");
        write_trail(&probe, 1, None);
        std::fs::metadata(&probe).unwrap().len()
    };
    // Three lines a file: 8 lines make two rotated files and the live one.
    write_trail(&path, 8, Some(line * 3 + line / 2));
    let (intact, output) = verify(&path);
    assert!(intact, "{output}");
    assert!(output.contains("8 line(s) in 3 file(s)"), "{output}");

    // The first line of the second rotated file edited: caught at its line 2.
    let second = rotated_name(&path, 2);
    let original = lines(&second);
    let mut edited = original.clone();
    edited[0] = edited[0].replace("pipeline", "someone");
    rewrite(&second, &edited);
    let (intact, output) = verify(&path);
    assert!(!intact, "{output}");
    assert!(
        output.contains(&format!("{} line 2:", second.display())),
        "{output}"
    );
    // The last line of the first rotated file removed: caught at the first
    // line of the next file.
    rewrite(&second, &original);
    let first = rotated_name(&path, 1);
    let mut cut = lines(&first);
    cut.pop();
    rewrite(&first, &cut);
    let (intact, output) = verify(&path);
    assert!(!intact, "{output}");
    assert!(
        output.contains(&format!("{} line 1:", second.display())),
        "{output}"
    );
}

/// `mmt check` in a clean production-like environment plus `env`; its exit
/// status and the report.
fn prod_check(env: &[(&str, &str)], remove: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .arg("check")
        .current_dir(common::root())
        .env("ENV", "prod")
        .env("INTERNAL_JWT_SECRET", "s3cr3t-0123456789-abcdefghijklmnop");
    for name in [
        "AUDIT_LOG_FILE",
        "MMT_JWT_PUBLIC_KEYS_DIR",
        "MMT_JWT_LEEWAY_SECONDS",
    ]
    .iter()
    .chain(remove)
    {
        command.env_remove(name);
    }
    let output = command.envs(env.iter().copied()).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The report's lines about `variable`.
fn about<'a>(report: &'a str, variable: &str) -> Vec<&'a str> {
    report
        .lines()
        .filter(|line| line.contains(&format!(" {variable}:")))
        .collect()
}

#[test]
fn production_check_requires_a_writable_audit_trail() {
    let (ok, report) = prod_check(&[], &[]);
    assert!(!ok, "{report}");
    let unset = about(&report, "AUDIT_LOG_FILE");
    assert_eq!(unset.len(), 1, "{report}");
    assert!(unset[0].starts_with("FATAL"), "{report}");

    let dir = tempfile::tempdir().unwrap();
    let unmounted = dir.path().join("not-mounted/audit.jsonl");
    let (ok, report) = prod_check(&[("AUDIT_LOG_FILE", unmounted.to_str().unwrap())], &[]);
    assert!(!ok, "{report}");
    let unwritable = about(&report, "AUDIT_LOG_FILE");
    assert!(
        unwritable.len() == 1 && unwritable[0].contains("cannot be written"),
        "{report}"
    );

    let writable = dir.path().join("audit.jsonl");
    let (_, report) = prod_check(&[("AUDIT_LOG_FILE", writable.to_str().unwrap())], &[]);
    assert!(about(&report, "AUDIT_LOG_FILE").is_empty(), "{report}");
    assert!(!writable.exists(), "the check writes nothing");
}

#[test]
fn an_rs256_only_deployment_needs_no_hs256_secret_in_production() {
    let keys = tempfile::tempdir().unwrap();
    let (_, report) = prod_check(&[], &["INTERNAL_JWT_SECRET"]);
    assert_eq!(about(&report, "INTERNAL_JWT_SECRET").len(), 1, "{report}");
    let (_, report) = prod_check(
        &[("MMT_JWT_PUBLIC_KEYS_DIR", keys.path().to_str().unwrap())],
        &["INTERNAL_JWT_SECRET"],
    );
    assert!(about(&report, "INTERNAL_JWT_SECRET").is_empty(), "{report}");
    assert!(
        about(&report, "MMT_JWT_PUBLIC_KEYS_DIR").is_empty(),
        "{report}"
    );
    assert!(!report.contains("is not a variable MMT reads"), "{report}");

    let (ok, report) = prod_check(&[("MMT_JWT_LEEWAY_SECONDS", "3600")], &[]);
    assert!(!ok);
    assert!(
        about(&report, "MMT_JWT_LEEWAY_SECONDS")[0].starts_with("FATAL"),
        "{report}"
    );
}

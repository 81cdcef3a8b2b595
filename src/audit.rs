//! `mmt audit verify`: checks the hash chain of the audit trail; and the
//! start-up check that the trail can be written.

use crate::cli::AuditVerifyArgs;
use anyhow::{Context, Result};
use mmt_connectors::files::chain;
use mmt_pipeline::config::Config;
use std::process::ExitCode;

/// Reads the trail (`--file`, else `AUDIT_LOG_FILE`) and its rotated files in
/// order; prints the first broken link and exits 1, or the count and the head.
pub fn verify(args: AuditVerifyArgs) -> Result<ExitCode> {
    // Only the file's name is needed: other problems of the configuration
    // (a production database unset on an operator's laptop) do not matter here.
    let file = match args.file {
        Some(file) => file,
        None => Config::load_env().config.audit.log_file,
    };
    let verification = chain::verify(&file)
        .with_context(|| format!("cannot read the audit trail {}", file.display()))?;
    let files = verification.files.len();
    if let Some(broken) = &verification.broken {
        println!(
            "audit trail BROKEN at {broken}; {} line(s) before it chain correctly",
            verification.records
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "audit trail intact: {} line(s) in {files} file(s); head {}",
        verification.records,
        verification.head.as_deref().unwrap_or("-")
    );
    if verification.unfinished_tail {
        println!("note: the live file ends in an unfinished line (a crash during a write); the writer cuts it off when it next starts");
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses to start when an explicit `AUDIT_LOG_FILE` cannot be written (its
/// folder missing: the audit volume not mounted; no permission).
pub fn require_writable_trail(config: &Config) -> Result<()> {
    let mut problems = Vec::new();
    config.audit.check_files(&mut problems);
    match problems.first() {
        Some(problem) => anyhow::bail!("{problem}"),
        None => Ok(()),
    }
}

//! `mmt keys`: the keys of encryption at rest, a local keyring
//! (`MMT_ENCRYPTION_KEYS`) or Vault's transit engine (`MMT_VAULT_TRANSIT_KEY`).
//!
//! `rotate` adds a key (creating the keyring if missing; with transit, it
//! rotates the transit key in Vault, a new version): new writes are
//! sealed under it at once, data under older keys stays readable. The
//! background half of a rotation is `reencrypt`, run once after a rotation
//! or on a schedule (a CronJob, like `mmt retention purge`): it re-seals every
//! transcript and upload not under the current key, and seals what was
//! stored in clear before encryption was on. `retire` then refuses an old
//! key's data for good (with transit that is Vault's `min_decryption_version`,
//! set in Vault: the command says how).

use anyhow::{bail, Context, Result};
use mmt_connectors::vault::TransitKeyProvider;
use mmt_core::crypt::{KeyState, KeySummary, Keyring, KEYS_VARIABLE};
use mmt_pipeline::run::OutputPaths;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{KeysArgs, KeysCommand, ReencryptArgs};

/// Rows read per page while re-encrypting.
const REENCRYPT_PAGE: u32 = 500;

pub fn run(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Rotate(args) => rotate(&args),
        KeysCommand::List(args) => list(&args),
        KeysCommand::Retire { keys, id } => retire(&keys, &id),
        KeysCommand::Reencrypt(args) => reencrypt(&args),
    }
}

/// `--keyring`, else `MMT_ENCRYPTION_KEYS`.
fn keyring_path(args: &KeysArgs) -> Result<PathBuf> {
    match &args.keyring {
        Some(path) => Ok(path.clone()),
        None => std::env::var_os(KEYS_VARIABLE)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
            .with_context(|| format!("name the keyring with --keyring or {KEYS_VARIABLE}")),
    }
}

/// The transit provider when the configuration names one and no
/// `--keyring` is given.
fn transit(args: &KeysArgs) -> Result<Option<TransitKeyProvider>> {
    if args.keyring.is_some() {
        return Ok(None);
    }
    let config = crate::transcribe::load_config()?;
    Ok(config
        .encryption
        .transit_provider(config.vault.vault.as_ref())?)
}

fn rotate(args: &KeysArgs) -> Result<ExitCode> {
    if let Some(transit) = transit(args)? {
        let id = transit.rotate()?;
        println!(
            "rotated the Vault transit key {}: new data is sealed under {id}; run \
             `mmt keys reencrypt` to re-seal older data",
            transit.transit().key
        );
        return Ok(ExitCode::SUCCESS);
    }
    let path = keyring_path(args)?;
    let (mut keyring, created) = if path.exists() {
        (Keyring::load(&path)?, false)
    } else {
        (Keyring::generate()?, true)
    };
    let id = if created {
        mmt_core::crypt::KeyProvider::current_key_id(&keyring)
    } else {
        keyring.rotate()?
    };
    keyring.save(&path)?;
    if created {
        println!("created keyring {} with key {id}", path.display());
    } else {
        println!(
            "added key {id}: new data is sealed under it; run `mmt keys reencrypt` \
             to re-seal older data"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(args: &KeysArgs) -> Result<ExitCode> {
    let keys: Vec<KeySummary> = match transit(args)? {
        Some(transit) => transit.summary()?,
        None => Keyring::load(&keyring_path(args)?)?.summary(),
    };
    for key in keys {
        let state = match key.state {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        };
        let current = if key.current { " (current)" } else { "" };
        println!("{}\t{state}{current}\tcreated {}", key.id, key.created_at);
    }
    Ok(ExitCode::SUCCESS)
}

fn retire(args: &KeysArgs, id: &str) -> Result<ExitCode> {
    if let Some(transit) = transit(args)? {
        let config = transit.transit();
        let Some(version) = config.version_of(id) else {
            bail!("{id:?} is not a version of the transit key {}", config.key);
        };
        // The AppRole of a worker has no business changing key policy: the
        // operator retires versions in Vault.
        bail!(
            "transit key versions are retired in Vault: `vault write {}/keys/{}/config \
             min_decryption_version={}` retires {id} and every older version (run \
             `mmt keys reencrypt` first)",
            config.mount,
            config.key,
            version + 1
        );
    }
    let path = keyring_path(args)?;
    let mut keyring = Keyring::load(&path)?;
    keyring.retire(id)?;
    keyring.save(&path)?;
    println!("retired key {id}: data still under it is refused from now on");
    Ok(ExitCode::SUCCESS)
}

fn reencrypt(args: &ReencryptArgs) -> Result<ExitCode> {
    let config = crate::transcribe::load_config()?;
    let Some(sealer) = mmt_pipeline::run::plan::sealer(&config)? else {
        bail!(
            "neither {KEYS_VARIABLE} nor MMT_VAULT_TRANSIT_KEY is set: there is no key to \
             re-encrypt under"
        );
    };
    let paths = OutputPaths::resolve(&config, &args.out);
    let mut store = mmt_connectors::sql::SqlJobStoreConfig::new(&paths.database_url)
        .build(config.environment.is_prod())?
        .with_sealer(Some(sealer.clone()));
    let transcripts = store.reseal_transcripts(REENCRYPT_PAGE)?;
    println!(
        "transcripts: {} examined, {} re-encrypted under {}, {} unreadable",
        transcripts.examined,
        transcripts.resealed,
        sealer.current_key_id(),
        transcripts.failed.len()
    );
    for id in &transcripts.failed {
        eprintln!("mmt: job {id}: transcript left as it is (see the log for why)");
    }
    let uploads_dir = args.out.join("uploads");
    let mut uploads_failed = 0;
    if uploads_dir.is_dir() {
        let uploads = mmt_pipeline::serve::uploads::UploadStore::at(&uploads_dir)
            .with_sealer(Some(sealer.clone()));
        let report = uploads.reseal_all()?;
        println!(
            "uploads: {} examined, {} re-encrypted, {} unreadable",
            report.examined,
            report.resealed,
            report.failed.len()
        );
        for id in &report.failed {
            eprintln!("mmt: job {id}: upload left as it is (see the log for why)");
        }
        uploads_failed = report.failed.len();
    }
    Ok(if transcripts.failed.is_empty() && uploads_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

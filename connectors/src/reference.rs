//! Audio named by reference: files on a volume the workers share, one folder
//! per tenant, `<root>/<tenant>/<reference>`.
//!
//! A reference is a relative path inside the submitting tenant's folder. It
//! may not be absolute, hold `..`, or pass through a symbolic link anywhere
//! (the tenant's folder included): the path is walked one component at a
//! time with `openat(…, O_NOFOLLOW)`, from a descriptor of the folder above,
//! so nothing on the way can be swapped for a link between a check and the
//! open. The file itself is opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO
//! opens at once instead of waiting for a writer) and judged on the open
//! descriptor (`fstat`: a regular file, at most the size limit), then read
//! from that same descriptor: what was checked is what is read.
//!
//! Every refusal, whatever its cause (outside the folder, missing,
//! unreadable, not a regular file, too large), is the one
//! [`ReferenceError::Refused`], whose text names the rules and never the
//! reference: a client cannot tell a file that exists from one that does
//! not, and the reference (which may name a patient) appears nowhere.
//! Operators see the cause in a debug log line, without the reference.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use mmt_core::spool::{SpoolWriter, SpooledAudio};
use rustix::fs::{Mode, OFlags, CWD};

use crate::config::ConfigProblem;

/// Bytes read from a referenced file at a time.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// What every refused reference answers.
pub const REFUSED: &str = "the audio reference does not name a file this tenant can submit: \
     it must be a relative path to a regular file in the tenant's reference folder, \
     with no '..' and no symbolic links, no larger than the upload size limit";

/// Where referenced audio lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceConfig {
    /// `MMT_AUDIO_REFERENCE_ROOT`: the folder holding one folder per tenant.
    /// The root itself is the operator's and may be reached through links;
    /// nothing below it may.
    pub root: PathBuf,
}

impl ReferenceConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Every problem at once; no I/O.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        if self.root.is_absolute() {
            Ok(())
        } else {
            Err(vec![ConfigProblem::new(
                "reference_root",
                "must be an absolute path (e.g. /var/lib/mmt/incoming)",
            )])
        }
    }

    /// The resolver over this root.
    pub fn build(self) -> ReferenceResolver {
        ReferenceResolver { root: self.root }
    }
}

/// Why a reference was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The one answer for any reference that cannot be submitted.
    #[error("{REFUSED}")]
    Refused,
    /// The audio could not be written to the spool: a condition of this
    /// server (a full disk), not of the reference.
    #[error("the referenced audio could not be stored: {0}")]
    Spool(std::io::ErrorKind),
}

/// Why a reference was refused, for the operator's debug log only.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    NotRelative,
    Walk(std::io::ErrorKind),
    NotRegularFile,
    TooLarge,
    Read(std::io::ErrorKind),
}

impl Refusal {
    /// Logs the cause (never the reference) and gives the client's answer.
    fn answer(self, tenant: &str) -> ReferenceError {
        tracing::debug!(tenant, cause = %self, "an audio reference was refused");
        ReferenceError::Refused
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRelative => f.write_str("not a relative path of plain names"),
            Self::Walk(kind) => write!(f, "could not be opened without links: {kind}"),
            Self::NotRegularFile => f.write_str("not a regular file"),
            Self::TooLarge => f.write_str("larger than the limit"),
            Self::Read(kind) => write!(f, "could not be read: {kind}"),
        }
    }
}

/// Opens referenced audio under a root, per tenant.
#[derive(Debug, Clone)]
pub struct ReferenceResolver {
    root: PathBuf,
}

impl ReferenceResolver {
    /// The file `tenant` names by `reference`, opened and checked: a regular
    /// file of at most `max_bytes`.
    pub fn open(
        &self,
        tenant: &str,
        reference: &str,
        max_bytes: u64,
    ) -> Result<ReferencedAudio, ReferenceError> {
        self.open_checked(tenant, reference, max_bytes)
            .map_err(|refusal| refusal.answer(tenant))
    }

    fn open_checked(
        &self,
        tenant: &str,
        reference: &str,
        max_bytes: u64,
    ) -> Result<ReferencedAudio, Refusal> {
        let tenant_folder = single_name(tenant).ok_or(Refusal::NotRelative)?;
        let names = relative_names(reference).ok_or(Refusal::NotRelative)?;
        let file = open_beneath(&self.root, tenant_folder, &names)?;
        let metadata = file.metadata().map_err(|err| Refusal::Walk(err.kind()))?;
        if !metadata.file_type().is_file() {
            return Err(Refusal::NotRegularFile);
        }
        if metadata.len() > max_bytes {
            return Err(Refusal::TooLarge);
        }
        let extension = Path::new(reference)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        Ok(ReferencedAudio {
            file,
            max_bytes,
            extension,
            tenant: tenant.to_owned(),
        })
    }
}

/// `name` if it is one plain path component (not empty, `.`, `..` or with a `/`).
fn single_name(name: &str) -> Option<&OsStr> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(only)), None) if only == OsStr::new(name) => Some(only),
        _ => None,
    }
}

/// The components of a relative reference, if every one is a plain name.
fn relative_names(reference: &str) -> Option<Vec<&OsStr>> {
    if reference.is_empty() || reference.contains('\0') {
        return None;
    }
    let names: Option<Vec<&OsStr>> = Path::new(reference)
        .components()
        .map(|component| match component {
            Component::Normal(name) => Some(name),
            // Absolute, `..`, or a leading `.`.
            _ => None,
        })
        .collect();
    names.filter(|names| !names.is_empty())
}

/// Opens `<root>/<tenant>/<names…>` without following a link below `root`:
/// each folder is opened from the previous one's descriptor, `O_NOFOLLOW`.
fn open_beneath(root: &Path, tenant: &OsStr, names: &[&OsStr]) -> Result<File, Refusal> {
    let walk = |err: rustix::io::Errno| Refusal::Walk(std::io::Error::from(err).kind());
    let folder_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut folder: OwnedFd =
        rustix::fs::openat(CWD, root, folder_flags, Mode::empty()).map_err(walk)?;
    let Some((file_name, folders)) = names.split_last() else {
        return Err(Refusal::NotRelative);
    };
    for name in std::iter::once(&tenant).chain(folders) {
        folder = rustix::fs::openat(
            &folder,
            *name,
            folder_flags | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(walk)?;
    }
    // NONBLOCK: opening a FIFO would otherwise wait for a writer; NOCTTY: a
    // terminal never becomes this process's.
    let file_flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    rustix::fs::openat(&folder, *file_name, file_flags, Mode::empty())
        .map(File::from)
        .map_err(walk)
}

/// A referenced file, open and checked, not read yet.
#[derive(Debug)]
pub struct ReferencedAudio {
    file: File,
    max_bytes: u64,
    /// The reference's extension, lowercase: a hint of the container.
    extension: Option<String>,
    tenant: String,
}

impl ReferencedAudio {
    /// The extension of the reference, lowercase, if it has one.
    pub fn extension(&self) -> Option<&str> {
        self.extension.as_deref()
    }

    /// The whole file in memory (a broker's message, whose record carries bytes).
    pub fn read_to_vec(self) -> Result<Vec<u8>, ReferenceError> {
        let mut bytes = Vec::new();
        self.read_chunks(|chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(bytes)
    }

    /// The file copied into a spool file in `dir`, hashed on the way, holding
    /// at most one chunk in memory.
    pub fn spool_into(self, dir: &Path) -> Result<SpooledAudio, ReferenceError> {
        self.spool_sealed_into(dir, None)
    }

    /// [`Self::spool_into`], sealing the spool file with `sealer` when there is one.
    pub fn spool_sealed_into(
        self,
        dir: &Path,
        sealer: Option<&mmt_core::crypt::Sealer>,
    ) -> Result<SpooledAudio, ReferenceError> {
        let spool_failed = |err: std::io::Error| ReferenceError::Spool(err.kind());
        let mut spool = SpoolWriter::create_sealed(dir, sealer).map_err(spool_failed)?;
        self.read_chunks(|chunk| spool.append(chunk))?;
        spool.finish().map_err(spool_failed)
    }

    /// Feeds the file to `sink` a chunk at a time. The size was checked on the
    /// descriptor; a file that grows past the limit while it is read is
    /// refused all the same.
    fn read_chunks(
        self,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ReferenceError> {
        let Self {
            file,
            max_bytes,
            tenant,
            ..
        } = self;
        let mut limited = file.take(max_bytes.saturating_add(1));
        let mut buffer = vec![0; READ_CHUNK_BYTES];
        let mut read_total = 0u64;
        loop {
            let read = match limited.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Refusal::Read(err.kind()).answer(&tenant)),
            };
            read_total += read as u64;
            if read_total > max_bytes {
                return Err(Refusal::TooLarge.answer(&tenant));
            }
            sink(&buffer[..read]).map_err(|err| ReferenceError::Spool(err.kind()))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with two tenants' folders and a file outside it.
    struct Volume {
        root: tempfile::TempDir,
        outside: tempfile::TempDir,
    }

    impl Volume {
        fn new() -> Self {
            let volume = Self {
                root: tempfile::tempdir().unwrap(),
                outside: tempfile::tempdir().unwrap(),
            };
            for tenant in ["clinic-a", "clinic-b"] {
                std::fs::create_dir_all(volume.root.path().join(tenant).join("2024")).unwrap();
            }
            volume.write("clinic-a/2024/Smith_John.wav", b"RIFF audio of clinic a");
            volume.write("clinic-b/b.wav", b"RIFF audio of clinic b");
            std::fs::write(volume.outside.path().join("secret.wav"), b"not yours").unwrap();
            volume
        }

        fn write(&self, relative: &str, bytes: &[u8]) {
            std::fs::write(self.root.path().join(relative), bytes).unwrap();
        }

        fn resolver(&self) -> ReferenceResolver {
            ReferenceConfig::new(self.root.path()).build()
        }

        fn open(&self, tenant: &str, reference: &str) -> Result<ReferencedAudio, ReferenceError> {
            self.resolver().open(tenant, reference, 1024)
        }
    }

    fn refused(result: Result<ReferencedAudio, ReferenceError>) -> String {
        match result {
            Err(err @ ReferenceError::Refused) => err.to_string(),
            other => panic!("expected the one refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_reference_in_the_tenants_folder_is_read_from_the_checked_descriptor() {
        let volume = Volume::new();
        let audio = volume.open("clinic-a", "2024/Smith_John.wav").unwrap();
        assert_eq!(audio.extension(), Some("wav"));
        assert_eq!(audio.read_to_vec().unwrap(), b"RIFF audio of clinic a");

        let spool = tempfile::tempdir().unwrap();
        let spooled = volume
            .open("clinic-a", "2024/Smith_John.wav")
            .unwrap()
            .spool_into(spool.path())
            .unwrap();
        assert_eq!(spooled.len(), 22);
        assert_eq!(
            spooled.content_hash(),
            mmt_core::content::content_hash(b"RIFF audio of clinic a")
        );
        assert_eq!(spooled.head(), b"RIFF audio of clinic a");
    }

    #[test]
    fn every_refusal_is_the_same_answer_and_names_no_path() {
        let volume = Volume::new();
        let root = volume.root.path();
        let tenant_a = root.join("clinic-a");
        // A link inside the tenant's folder pointing out of the root, one to
        // another tenant's file, and a linked folder on the way.
        symlink(
            volume.outside.path().join("secret.wav"),
            tenant_a.join("out.wav"),
        )
        .unwrap();
        symlink(root.join("clinic-b/b.wav"), tenant_a.join("b.wav")).unwrap();
        symlink(root.join("clinic-b"), tenant_a.join("linked")).unwrap();
        // A FIFO (must not hang), a folder, and a file over the limit.
        rustix::fs::mknodat(
            CWD,
            tenant_a.join("pipe.wav"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        volume.write("clinic-a/big.wav", &[0u8; 1025]);
        let outside = volume.outside.path().join("secret.wav");
        let cases: Vec<(&str, String)> = vec![
            ("absolute path outside", outside.display().to_string()),
            ("absolute path that does not exist", "/etc/nope".into()),
            (
                "absolute path inside",
                tenant_a.join("2024/Smith_John.wav").display().to_string(),
            ),
            ("dot-dot to another tenant", "../clinic-b/b.wav".into()),
            ("dot-dot inside", "2024/../2024/Smith_John.wav".into()),
            ("leading dot", "./2024/Smith_John.wav".into()),
            ("symlink pointing out of the root", "out.wav".into()),
            ("symlink to another tenant's file", "b.wav".into()),
            ("symlinked folder", "linked/b.wav".into()),
            ("fifo", "pipe.wav".into()),
            ("directory", "2024".into()),
            ("too big", "big.wav".into()),
            ("missing", "2024/Doe_Jane.wav".into()),
            ("empty", String::new()),
            (
                "file URL",
                format!("file://{}", tenant_a.join("2024/Smith_John.wav").display()),
            ),
        ];
        let started = std::time::Instant::now();
        let answers: Vec<String> = cases
            .iter()
            .map(|(case, reference)| {
                let answer = refused(volume.open("clinic-a", reference));
                assert!(
                    !answer.contains("Smith") && !answer.contains("Doe"),
                    "{case}: {answer}"
                );
                answer
            })
            .collect();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "a FIFO hung"
        );
        assert!(
            answers.iter().all(|answer| answer == REFUSED),
            "{answers:?}"
        );
    }

    #[test]
    fn a_tenant_cannot_read_another_tenants_file_nor_name_a_path_as_its_tenant() {
        let volume = Volume::new();
        refused(volume.open("clinic-b", "2024/Smith_John.wav"));
        for tenant in ["..", ".", "", "clinic-a/2024", "/clinic-a"] {
            refused(volume.open(tenant, "2024/Smith_John.wav"));
        }
        // A tenant folder that is itself a link is refused too.
        symlink(
            volume.root.path().join("clinic-a"),
            volume.root.path().join("clinic-c"),
        )
        .unwrap();
        refused(volume.open("clinic-c", "2024/Smith_John.wav"));
    }

    #[test]
    fn a_file_that_grows_past_the_limit_while_read_is_refused() {
        let volume = Volume::new();
        let audio = volume.open("clinic-a", "2024/Smith_John.wav").unwrap();
        // Appended after the descriptor was checked.
        volume.write("clinic-a/2024/Smith_John.wav", &[1u8; 2048]);
        assert!(matches!(audio.read_to_vec(), Err(ReferenceError::Refused)));
    }

    #[test]
    fn the_root_must_be_absolute() {
        assert!(ReferenceConfig::new("/var/lib/mmt/incoming")
            .validate()
            .is_ok());
        let problems = ReferenceConfig::new("incoming").validate().unwrap_err();
        assert_eq!(problems[0].field, "reference_root");
    }
}

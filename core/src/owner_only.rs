//! Files and folders that hold PHI are the service user's alone: files 0600,
//! folders 0700. One place for the modes and the calls that apply them, used
//! wherever such a file or folder is made (the job store, the output and
//! upload folders; the file sinks keep their own `FileMode`).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a file holding PHI.
pub const FILE_MODE: u32 = 0o600;

/// Mode of a folder holding PHI.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents, mode 0700 (folders that exist keep
/// theirs: they are the operator's).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates `path` empty, mode 0600, if it does not exist, and narrows it to
/// 0600 if it does (a file an older version made with the default mode).
pub fn create_file(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    restrict(path)
}

/// Narrows an existing file to mode 0600; a missing file is no error.
pub fn restrict(path: &Path) -> io::Result<()> {
    match fs::set_permissions(path, fs::Permissions::from_mode(FILE_MODE)) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_folders_are_owner_only_and_old_files_are_narrowed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out/fhir");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&root.path().join("out")), DIR_MODE);

        let file = dir.join("jobs.db");
        create_file(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);

        let old = dir.join("old.db");
        fs::write(&old, b"kept").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        create_file(&old).unwrap();
        assert_eq!(mode(&old), FILE_MODE);
        assert_eq!(fs::read(&old).unwrap(), b"kept", "never truncated");

        restrict(&dir.join("missing-wal")).unwrap();
    }
}

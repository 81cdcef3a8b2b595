//! The mechanics every file sink shares: an append-only JSON Lines file with one
//! record per key, durable per record, repaired after a crash.
//!
//! On open the file is read once: the key of every complete record goes into a
//! `HashSet`, and a trailing partial record (a last line without `\n`, or a last
//! line that is not JSON: what a crash in the middle of an append leaves) is cut
//! off. A bad record anywhere else is corruption, which no retry can fix: the
//! sink refuses to open rather than append after it.
//!
//! An append is `write_all` of one whole line and `sync_data`, so once it returns
//! the record survives a crash and the pipeline may acknowledge the message. A
//! failed append is cut back off the file before the error is returned.
//!
//! One `KeyedLog` per file: two writers of the same file (two processes, or two
//! sinks opened on one path) would each miss the other's keys. Sinks are `Clone`
//! and share one log between timely workers.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::Hash;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::error::Category;

use crate::error::{ConnectorError, Result};

/// A kind of record stored in a [`KeyedLog`]: how to read its key back from a line.
pub(crate) trait Record {
    /// The idempotency key: at most one record per key in the file.
    type Key: Eq + Hash + Clone + Send;
    /// Short name for messages (`document`, `audit event`).
    const NAME: &'static str;
    /// The key of one line (without its `\n`).
    fn key_of(line: &[u8]) -> serde_json::Result<Self::Key>;
}

/// How a log's file is created and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileMode {
    /// Unix permissions of a new file (and its new parent directory, plus the
    /// matching execute bits).
    pub mode: u32,
    /// Whether to reset an existing file to `mode` (files holding PHI).
    pub enforce: bool,
}

impl FileMode {
    /// Owner read/write only, enforced: for files holding PHI, and for the
    /// audit trail and dead letters too (tenants, job ids and failure reasons
    /// of patients' recordings: a log shipper reads them as the service user).
    pub const PHI: Self = Self {
        mode: mmt_core::owner_only::FILE_MODE,
        enforce: true,
    };

    fn dir_mode(self) -> u32 {
        // Every read bit gets its execute bit, so the directory can be traversed.
        self.mode | ((self.mode & 0o444) >> 2)
    }
}

/// An append-only JSON Lines file with at most one record per key.
pub(crate) struct KeyedLog<R: Record> {
    path: PathBuf,
    mode: FileMode,
    file: File,
    /// Bytes of complete records: where the next record starts.
    len: u64,
    /// Where the last complete record starts (`None` while the file holds none).
    last_start: Option<u64>,
    keys: HashSet<R::Key>,
    /// Set when a failed append could not be cut back off: reopen before the next write.
    needs_repair: bool,
    record: PhantomData<R>,
}

impl<R: Record> fmt::Debug for KeyedLog<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLog")
            .field("record", &R::NAME)
            .field("path", &self.path)
            .field("len", &self.len)
            .field("keys", &self.keys.len())
            .field("needs_repair", &self.needs_repair)
            .finish()
    }
}

impl<R: Record> KeyedLog<R> {
    /// Opens (creating if missing) the log at `path`, reading its keys and cutting
    /// off a crash's partial trailing record.
    pub fn open(path: &Path, mode: FileMode) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir(parent, mode.dir_mode())?;
        }
        let existed = path.exists();
        let file = open_append(path, mode)?;
        if existed && mode.enforce {
            set_mode(path, mode.mode)?;
        }
        if !existed {
            sync_parent(path)?;
        }
        // Under the file lock: a writer in another process that takes it
        // (the audit trail's) is never caught in the middle of a line, which
        // the scan would take for a crash's and cut off.
        lock_file(&file, path)?;
        let scanned = scan::<R>(path, &file, 0, Tail::CutOff);
        unlock_file(&file);
        let Scanned {
            len,
            last_start,
            keys,
        } = scanned?;
        Ok(Self {
            path: path.to_owned(),
            mode,
            file,
            len,
            last_start,
            keys,
            needs_repair: false,
            record: PhantomData,
        })
    }

    /// Whether a record with `key` is in the file.
    pub fn contains(&self, key: &R::Key) -> bool {
        self.keys.contains(key)
    }

    /// Bytes of complete records in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The last complete record (without its `\n`), if the file holds one.
    pub fn last_record(&self) -> Result<Option<Vec<u8>>> {
        self.last_start
            .map(|start| read_record(&self.file, &self.path, start, self.len))
            .transpose()
    }

    /// Takes the exclusive lock on the file that writers in other processes
    /// take too (advisory, `flock`); held until [`KeyedLog::unlock`] or until
    /// the file is closed.
    pub fn lock(&self) -> Result<()> {
        lock_file(&self.file, &self.path)
    }

    /// Releases [`KeyedLog::lock`].
    pub fn unlock(&self) {
        unlock_file(&self.file);
    }

    /// Whether the log's path still names the file this log writes (another
    /// process may have rotated it away).
    pub fn is_current(&self) -> Result<bool> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let held = self
                .file
                .metadata()
                .map_err(|source| ConnectorError::io("reading", &self.path, source))?;
            match fs::metadata(&self.path) {
                Ok(named) => Ok(named.dev() == held.dev() && named.ino() == held.ino()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(source) => Err(ConnectorError::io("reading", &self.path, source)),
            }
        }
        #[cfg(not(unix))]
        Ok(true)
    }

    /// Reads the records another process appended since this log last
    /// looked (call it under [`KeyedLog::lock`], on a log that needs no
    /// repair): their keys become known and the last of them is the last
    /// record.
    pub fn catch_up(&mut self) -> Result<()> {
        let size = self
            .file
            .metadata()
            .map_err(|source| ConnectorError::io("reading", &self.path, source))?
            .len();
        if size == self.len {
            return Ok(());
        }
        if size < self.len {
            return Err(ConnectorError::Corrupt {
                path: self.path.clone(),
                line: 0,
                reason: format!("the {} file shrank while it was open", R::NAME),
            });
        }
        let Scanned {
            len,
            last_start,
            keys,
        } = scan::<R>(&self.path, &self.file, self.len, Tail::CutOff)?;
        self.len = len;
        self.last_start = last_start.or(self.last_start);
        self.keys.extend(keys);
        Ok(())
    }

    /// Leaves the file this log holds (rotated away by another process) for
    /// the one its path names now, keeping every key.
    pub fn follow_path(&mut self) -> Result<()> {
        self.needs_repair = true;
        self.repair_if_needed()
    }

    /// Adds keys of records kept elsewhere (the rotated files of the same
    /// log): a key in them counts as present here.
    pub fn adopt_keys(&mut self, keys: impl IntoIterator<Item = R::Key>) {
        self.keys.extend(keys);
    }

    /// Renames the file to `to` and carries on in a new, empty file at the
    /// log's path; the keys of the renamed file stay known (log rotation).
    /// Both directory entries are durable before this returns.
    pub fn rotate_to(&mut self, to: &Path) -> Result<()> {
        self.repair_if_needed()?;
        if to.exists() {
            return Err(ConnectorError::io(
                "rotating to",
                to,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        fs::rename(&self.path, to)
            .map_err(|source| ConnectorError::io("rotating", &self.path, source))?;
        sync_parent(&self.path)?;
        // From here on the old file is complete; a failure to start the new
        // one is repaired (by creating it) before the next write.
        self.needs_repair = true;
        let file = open_append(&self.path, self.mode)?;
        // The new file is locked before the old one is let go (closing it
        // unlocks it): a writer in another process waiting on the old one
        // then finds the new one and waits there.
        lock_file(&file, &self.path)?;
        self.file = file;
        sync_parent(&self.path)?;
        self.len = 0;
        self.last_start = None;
        self.needs_repair = false;
        Ok(())
    }

    /// How many distinct keys the file holds.
    #[cfg(test)]
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Appends `line` (one JSON value, no newline) as the record of `key`, durably,
    /// unless the key is already present. Returns whether it was written.
    pub fn append(&mut self, key: R::Key, line: &[u8]) -> Result<bool> {
        self.repair_if_needed()?;
        if self.keys.contains(&key) {
            return Ok(false);
        }
        debug_assert!(!line.contains(&b'\n'), "a record is one line");
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Cut the partial record off so the next append starts on a line boundary.
            if self.file.set_len(self.len).is_err() {
                self.needs_repair = true;
            }
            return Err(ConnectorError::io("appending to", &self.path, source));
        }
        self.last_start = Some(self.len);
        self.len += buf.len() as u64;
        self.keys.insert(key);
        Ok(true)
    }

    /// Rewrites the file without the records whose key is in `remove` (temporary
    /// file, fsync, rename, fsync of the directory). Returns how many records went.
    pub fn remove(&mut self, remove: &HashSet<R::Key>) -> Result<u64> {
        self.repair_if_needed()?;
        if !remove.iter().any(|key| self.keys.contains(key)) {
            return Ok(0);
        }
        let tmp = temp_path(&self.path);
        let (kept_len, last_start, removed) =
            self.copy_without(&tmp, remove).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })?;
        fs::rename(&tmp, &self.path)
            .map_err(|source| ConnectorError::io("replacing", &self.path, source))?;
        sync_parent(&self.path)?;
        self.file = open_append(&self.path, self.mode)?;
        self.len = kept_len;
        self.last_start = last_start;
        self.keys.retain(|key| !remove.contains(key));
        Ok(removed)
    }

    /// Copies the records not in `remove` to `tmp`: the bytes kept, where the
    /// last kept record starts, and how many records were left out.
    fn copy_without(
        &self,
        tmp: &Path,
        remove: &HashSet<R::Key>,
    ) -> Result<(u64, Option<u64>, u64)> {
        let mut out = OpenOptions::new();
        out.write(true).create(true).truncate(true);
        set_create_mode(&mut out, self.mode.mode);
        let out = out
            .open(tmp)
            .map_err(|source| ConnectorError::io("creating", tmp, source))?;
        let mut writer = std::io::BufWriter::new(out);
        let input = File::open(&self.path)
            .map_err(|source| ConnectorError::io("opening", &self.path, source))?;
        let mut reader = BufReader::new(input);
        let (mut kept_len, mut removed, mut line_no) = (0u64, 0u64, 0u64);
        let mut last_start = None;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|source| ConnectorError::io("reading", &self.path, source))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let body = trim_newline(&line);
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let key = R::key_of(body).map_err(|error| ConnectorError::Corrupt {
                path: self.path.clone(),
                line: line_no,
                reason: format!("{} unreadable: {}", R::NAME, error_kind(&error)),
            })?;
            if remove.contains(&key) {
                removed += 1;
                continue;
            }
            writer
                .write_all(body)
                .and_then(|()| writer.write_all(b"\n"))
                .map_err(|source| ConnectorError::io("writing", tmp, source))?;
            last_start = Some(kept_len);
            kept_len += body.len() as u64 + 1;
        }
        let out = writer
            .into_inner()
            .map_err(|error| ConnectorError::io("writing", tmp, error.into_error()))?;
        out.sync_all()
            .map_err(|source| ConnectorError::io("syncing", tmp, source))?;
        Ok((kept_len, last_start, removed))
    }

    /// Re-reads the file after a failed write. Keys stay known: every one
    /// was added after its record was durable (or came from a rotated file).
    pub fn repair_if_needed(&mut self) -> Result<()> {
        if self.needs_repair {
            let mut reopened = Self::open(&self.path, self.mode)?;
            reopened.keys.extend(std::mem::take(&mut self.keys));
            *self = reopened;
        }
        Ok(())
    }

    /// Marks the log for a re-read before its next write (after a panic in a
    /// worker holding it, say).
    pub fn mark_needs_repair(&mut self) {
        self.needs_repair = true;
    }
}

/// What can be told that a writer panicked while holding it (see [`Shared::lock`]).
pub(crate) trait Repair {
    /// Re-read the file before the next write.
    fn mark_needs_repair(&mut self);
}

impl<R: Record> Repair for KeyedLog<R> {
    fn mark_needs_repair(&mut self) {
        KeyedLog::mark_needs_repair(self);
    }
}

/// A log (or a log with state of its own, like the audit trail's chain)
/// shared by clones of one sink (one per timely worker, the API).
pub(crate) struct Shared<T: Repair>(Arc<Mutex<T>>);

/// A [`KeyedLog`] shared by clones of one sink.
pub(crate) type SharedLog<R> = Shared<KeyedLog<R>>;

impl<R: Record> Shared<KeyedLog<R>> {
    pub fn open(path: &Path, mode: FileMode) -> Result<Self> {
        KeyedLog::open(path, mode).map(Shared::new)
    }
}

impl<T: Repair> Shared<T> {
    pub fn new(inner: T) -> Self {
        Self(Arc::new(Mutex::new(inner)))
    }

    /// Locks the log. A worker that panicked while holding it may have left an
    /// append half done: the log is then re-read before its next write.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        match self.0.lock() {
            Ok(log) => log,
            Err(poisoned) => {
                self.0.clear_poison();
                let mut log = poisoned.into_inner();
                log.mark_needs_repair();
                log
            }
        }
    }
}

impl<T: Repair> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Repair + fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.try_lock() {
            Ok(log) => f.debug_tuple("Shared").field(&*log).finish(),
            Err(_) => f.write_str("Shared(<locked>)"),
        }
    }
}

/// What reading a log found.
struct Scanned<K> {
    /// Bytes of complete records.
    len: u64,
    /// Where the last complete record starts.
    last_start: Option<u64>,
    keys: HashSet<K>,
}

/// What to do with an unfinished last record (what a crash in the middle of
/// an append leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Cut it off: the file is the live one and is about to be appended to.
    CutOff,
    /// Refuse the file: a rotated file is complete, so it is corruption.
    Refuse,
}

/// What a rotated file of a log holds that its successor needs.
pub(crate) struct Closed<K> {
    /// The key of every record.
    pub keys: HashSet<K>,
    /// The last record (without its line ending), if any.
    pub last: Option<Vec<u8>>,
}

/// The keys and last record of a complete log file that is no longer
/// written to (a rotated file of the log), read without changing it.
pub(crate) fn read_closed<R: Record>(path: &Path) -> Result<Closed<R::Key>> {
    let file = File::open(path).map_err(|source| ConnectorError::io("opening", path, source))?;
    let Scanned {
        len,
        last_start,
        keys,
    } = scan::<R>(path, &file, 0, Tail::Refuse)?;
    let last = last_start
        .map(|start| read_record(&file, path, start, len))
        .transpose()?;
    Ok(Closed { keys, last })
}

/// The record in bytes `start..end` of `file`, without its line ending.
fn read_record(file: &File, path: &Path, start: u64, end: u64) -> Result<Vec<u8>> {
    let mut record = vec![0; end.saturating_sub(start) as usize];
    let mut reader = file;
    reader
        .seek(SeekFrom::Start(start))
        .and_then(|_| reader.read_exact(&mut record))
        .map_err(|source| ConnectorError::io("reading", path, source))?;
    Ok(trim_newline(&record).to_vec())
}

/// Reads the key of every record from byte `from` on (a record boundary);
/// cuts a crash's partial trailing record off (or refuses it, see [`Tail`]).
/// Line numbers in errors count from `from`.
fn scan<R: Record>(path: &Path, file: &File, from: u64, tail: Tail) -> Result<Scanned<R::Key>> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(from))
        .map_err(|source| ConnectorError::io("reading", path, source))?;
    let mut keys = HashSet::new();
    let mut offset = from;
    let mut line_no = 0u64;
    let mut last_start = None;
    // The first unreadable line, if any: fine only if nothing but blanks follows it.
    let mut bad: Option<(u64, u64, String)> = None;
    let mut truncate_at = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| ConnectorError::io("reading", path, source))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let start = offset;
        offset += n as u64;
        let complete = line.last() == Some(&b'\n');
        let body = trim_newline(&line);
        if complete && body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some((bad_line, _, reason)) = bad.take() {
            return Err(ConnectorError::Corrupt {
                path: path.to_owned(),
                line: bad_line,
                reason,
            });
        }
        if !complete {
            if tail == Tail::Refuse {
                return Err(ConnectorError::Corrupt {
                    path: path.to_owned(),
                    line: line_no,
                    reason: format!("the last {} is unfinished", R::NAME),
                });
            }
            truncate_at = Some(start);
            break;
        }
        match R::key_of(body) {
            Ok(key) => {
                keys.insert(key);
                last_start = Some(start);
            }
            Err(error)
                if tail == Tail::CutOff
                    && matches!(error.classify(), Category::Syntax | Category::Eof) =>
            {
                bad = Some((
                    line_no,
                    start,
                    format!("{} is not JSON: {}", R::NAME, error_kind(&error)),
                ));
            }
            Err(error) => {
                return Err(ConnectorError::Corrupt {
                    path: path.to_owned(),
                    line: line_no,
                    reason: format!("not a {}: {}", R::NAME, error_kind(&error)),
                });
            }
        }
    }
    if let Some((_, start, _)) = bad {
        truncate_at = Some(start);
    }
    let len = match truncate_at {
        Some(at) => {
            file.set_len(at)
                .and_then(|()| file.sync_all())
                .map_err(|source| ConnectorError::io("truncating", path, source))?;
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = offset - at,
                record = R::NAME,
                "cut off a partial trailing record left by a crash"
            );
            at
        }
        None => offset,
    };
    Ok(Scanned {
        len,
        last_start,
        keys,
    })
}

/// A serde_json error's category and position, without the offending text.
fn error_kind(error: &serde_json::Error) -> String {
    let category = match error.classify() {
        Category::Io => "I/O",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected fields or types",
        Category::Eof => "unexpected end",
    };
    format!("{category} at column {}", error.column())
}

/// A line without its `\n` (or `\r\n`).
pub(crate) fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Takes the advisory exclusive lock of `file` (`flock`), waiting for it. A
/// file system without locks is written without them (one writer per file
/// is then the operator's to ensure).
#[cfg(unix)]
fn lock_file(file: &File, path: &Path) -> Result<()> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::LockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(errno) => Err(ConnectorError::io("locking", path, errno.into())),
    }
}

#[cfg(unix)]
fn unlock_file(file: &File) {
    // Fails only if the lock was not held; closing the file releases it anyway.
    let _ = rustix::fs::flock(file, rustix::fs::FlockOperation::Unlock);
}

#[cfg(not(unix))]
fn lock_file(_file: &File, _path: &Path) -> Result<()> {
    Ok(())
}

#[cfg(not(unix))]
fn unlock_file(_file: &File) {}

fn open_append(path: &Path, mode: FileMode) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    set_create_mode(&mut options, mode.mode);
    options
        .open(path)
        .map_err(|source| ConnectorError::io("opening", path, source))
}

fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder
        .create(dir)
        .map_err(|source| ConnectorError::io("creating directory", dir, source))
}

#[cfg(unix)]
fn set_create_mode(options: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_create_mode(_options: &mut OpenOptions, _mode: u32) {}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| ConnectorError::io("restricting permissions of", path, source))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// Makes a new or renamed directory entry durable.
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| ConnectorError::io("syncing directory", parent, source))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `{"k": "..."}` keyed by `k`.
    struct Test;

    impl Record for Test {
        type Key = String;
        const NAME: &'static str = "test record";
        fn key_of(line: &[u8]) -> serde_json::Result<String> {
            #[derive(serde::Deserialize)]
            struct Line {
                k: String,
            }
            serde_json::from_slice::<Line>(line).map(|l| l.k)
        }
    }

    fn line(key: &str) -> Vec<u8> {
        format!(r#"{{"k":"{key}"}}"#).into_bytes()
    }

    fn open(path: &Path) -> KeyedLog<Test> {
        KeyedLog::open(path, FileMode::PHI).expect("open")
    }

    #[test]
    fn appends_once_per_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/log.jsonl");
        let mut log = open(&path);
        assert!(log.append("a".into(), &line("a")).expect("append"));
        assert!(!log.append("a".into(), &line("a")).expect("append"));
        assert!(log.append("b".into(), &line("b")).expect("append"));
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"k\":\"a\"}\n{\"k\":\"b\"}\n");
        // Reopening remembers the keys.
        let mut log = open(&path);
        assert_eq!(log.key_count(), 2);
        assert!(!log.append("b".into(), &line("b")).expect("append"));
    }

    #[cfg(unix)]
    #[test]
    fn phi_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        fs::write(&path, "").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let _log = open(&path);
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn partial_trailing_line_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        fs::write(&path, "{\"k\":\"a\"}\n{\"k\":\"b\"").expect("write");
        let mut log = open(&path);
        assert!(log.contains(&"a".to_owned()));
        assert!(!log.contains(&"b".to_owned()));
        assert_eq!(fs::read_to_string(&path).expect("read"), "{\"k\":\"a\"}\n");
        assert!(log.append("b".into(), &line("b")).expect("append"));
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "{\"k\":\"a\"}\n{\"k\":\"b\"}\n"
        );
    }

    #[test]
    fn torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        // A complete-looking last line that is not JSON (torn write), then blanks.
        fs::write(&path, "{\"k\":\"a\"}\n{\"k\":\0\0\n\n").expect("write");
        let log = open(&path);
        assert_eq!(log.key_count(), 1);
        assert_eq!(fs::read_to_string(&path).expect("read"), "{\"k\":\"a\"}\n");
    }

    #[test]
    fn bad_line_in_the_middle_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        let original = "{\"k\":\"a\"}\nnot json\n{\"k\":\"b\"}\n";
        fs::write(&path, original).expect("write");
        let error = KeyedLog::<Test>::open(&path, FileMode::PHI).expect_err("corrupt");
        assert!(
            matches!(error, ConnectorError::Corrupt { line: 2, .. }),
            "{error}"
        );
        assert_eq!(error.class(), mmt_core::ErrorClass::Internal);
        // Nothing was cut.
        assert_eq!(fs::read_to_string(&path).expect("read"), original);
    }

    #[test]
    fn json_of_the_wrong_shape_is_corruption_even_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        fs::write(&path, "{\"k\":\"a\"}\n{\"other\":1}\n").expect("write");
        let error = KeyedLog::<Test>::open(&path, FileMode::PHI).expect_err("corrupt");
        assert!(
            matches!(error, ConnectorError::Corrupt { line: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn remove_rewrites_without_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.jsonl");
        let mut log = open(&path);
        for key in ["a", "b", "c"] {
            log.append(key.into(), &line(key)).expect("append");
        }
        let remove: HashSet<String> = ["b".to_owned(), "zz".to_owned()].into();
        assert_eq!(log.remove(&remove).expect("remove"), 1);
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            "{\"k\":\"a\"}\n{\"k\":\"c\"}\n"
        );
        assert!(!temp_path(&path).exists());
        // Nothing to remove: no rewrite.
        assert_eq!(log.remove(&remove).expect("remove"), 0);
        // Appends continue on the new file, and a removed key may come back.
        assert!(log.append("b".into(), &line("b")).expect("append"));
        let log = open(&path);
        assert_eq!(log.key_count(), 3);
    }

    #[test]
    fn temp_path_is_a_sibling() {
        assert_eq!(
            temp_path(Path::new("/x/DocumentReference.ndjson")),
            PathBuf::from("/x/DocumentReference.ndjson.tmp")
        );
    }
}

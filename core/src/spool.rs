//! Audio written to a spool file as it arrives (an upload, or a referenced
//! file), hashed on the way, so that its size never costs memory.
//!
//! One mechanism for every way audio enters `mmt serve`: [`SpoolWriter`]
//! creates an owner-only temporary file (`upload-*.partial`, so a crash's
//! leftovers are recognised and removed) in the folder the audio will be kept
//! in, and [`SpoolWriter::finish`] makes it durable and hands back a
//! [`SpooledAudio`], whose file is removed when it is dropped unless it is
//! [`persist`](SpooledAudio::persist)ed: every refusal cleans up after itself.
//!
//! With a [`Sealer`] (`MMT_ENCRYPTION_KEYS`), the file is a sealed stream
//! ([`crate::crypt::stream`], context [`SEALED_CONTEXT`]) from its first
//! byte: the audio is never on disk in clear. The hash, length and head are
//! the audio's own.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::content::ContentHasher;
use crate::crypt::stream::SealedWriter;
use crate::crypt::Sealer;

/// The context (AAD) of sealed audio files: a sealed audio file opens only as one.
pub const SEALED_CONTEXT: &[u8] = b"mmt-audio";

/// Bytes kept from the start of the audio to tell its format by.
pub const HEAD_BYTES: usize = 64;

/// Audio in a spool file (already fsynced), with its content hash, its
/// length and its first [`HEAD_BYTES`] bytes.
#[derive(Debug)]
pub struct SpooledAudio {
    file: tempfile::TempPath,
    content_hash: String,
    len: u64,
    head: Vec<u8>,
}

impl SpooledAudio {
    /// The content hash of the audio (as `content::content_hash` of its bytes).
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first bytes of the audio (at most [`HEAD_BYTES`]).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Renames the file to `path` (in the same folder's file system), keeping it.
    pub fn persist(self, path: &Path) -> std::io::Result<()> {
        self.file.persist(path).map_err(|err| err.error)
    }
}

/// The spool file, written in clear or sealed.
#[derive(Debug)]
enum SpoolFile {
    Clear(tempfile::NamedTempFile),
    Sealed(Box<SealedWriter<tempfile::NamedTempFile>>),
}

/// A spool file being written.
#[derive(Debug)]
pub struct SpoolWriter {
    file: SpoolFile,
    dir: PathBuf,
    hasher: ContentHasher,
    len: u64,
    head: Vec<u8>,
}

impl SpoolWriter {
    /// A new, empty spool file in `dir` (mode 0600, as `tempfile` creates them).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        Self::create_sealed(dir, None)
    }

    /// [`SpoolWriter::create`], sealing the file with `sealer` when there is one.
    pub fn create_sealed(dir: &Path, sealer: Option<&Sealer>) -> std::io::Result<Self> {
        let file = tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".partial")
            .tempfile_in(dir)?;
        let file = match sealer {
            Some(sealer) => SpoolFile::Sealed(Box::new(
                SealedWriter::new(sealer, file, SEALED_CONTEXT).map_err(std::io::Error::other)?,
            )),
            None => SpoolFile::Clear(file),
        };
        Ok(Self {
            file,
            dir: dir.to_owned(),
            hasher: ContentHasher::default(),
            len: 0,
            head: Vec::with_capacity(HEAD_BYTES),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes and writes the next piece of the audio.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let wanted = HEAD_BYTES.saturating_sub(self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..wanted]);
        self.hasher.update(bytes);
        match &mut self.file {
            SpoolFile::Clear(file) => file.write_all(bytes)?,
            SpoolFile::Sealed(writer) => writer.write_all(bytes)?,
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes the file and its name durable (the file, then its folder).
    pub fn finish(self) -> std::io::Result<SpooledAudio> {
        let file = match self.file {
            SpoolFile::Clear(file) => file,
            SpoolFile::Sealed(writer) => writer.finish()?,
        };
        file.as_file().sync_all()?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(SpooledAudio {
            file: file.into_temp_path(),
            content_hash: self.hasher.finish(),
            len: self.len,
            head: self.head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::content_hash;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_spool_hashes_keeps_the_head_and_cleans_up_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = SpoolWriter::create(dir.path()).unwrap();
        let audio: Vec<u8> = (0..200u8).collect();
        for piece in audio.chunks(30) {
            writer.append(piece).unwrap();
        }
        let spooled = writer.finish().unwrap();
        assert_eq!(spooled.len(), 200);
        assert_eq!(spooled.content_hash(), content_hash(&audio));
        assert_eq!(spooled.head(), &audio[..HEAD_BYTES]);
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "spool files are owner-only");

        drop(spooled);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut writer = SpoolWriter::create(dir.path()).unwrap();
        writer.append(b"kept").unwrap();
        let kept = dir.path().join("kept.audio");
        writer.finish().unwrap().persist(&kept).unwrap();
        assert_eq!(std::fs::read(&kept).unwrap(), b"kept");
    }

    #[test]
    fn a_sealed_spool_never_holds_the_audio_in_clear() {
        use crate::crypt::stream::{is_sealed, SealedReader};
        use crate::crypt::Keyring;
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(std::sync::Arc::new(Keyring::generate().unwrap()));
        let mut writer = SpoolWriter::create_sealed(dir.path(), Some(&sealer)).unwrap();
        let audio: Vec<u8> = b"RIFF....WAVE Smith John "
            .iter()
            .copied()
            .cycle()
            .take(200_000)
            .collect();
        for piece in audio.chunks(8192) {
            writer.append(piece).unwrap();
        }
        let spooled = writer.finish().unwrap();
        assert_eq!(spooled.len(), audio.len() as u64);
        assert_eq!(spooled.content_hash(), content_hash(&audio));
        assert_eq!(spooled.head(), &audio[..HEAD_BYTES]);
        let kept = dir.path().join("kept.audio");
        spooled.persist(&kept).unwrap();
        let on_disk = std::fs::read(&kept).unwrap();
        assert!(is_sealed(&on_disk));
        assert!(!on_disk.windows(5).any(|w| w == b"Smith"));
        let file = std::fs::File::open(&kept).unwrap();
        let mut reader = SealedReader::new(&sealer, file, SEALED_CONTEXT).unwrap();
        let mut back = Vec::new();
        reader.read_to_end(&mut back).unwrap();
        assert!(back == audio);
    }
}

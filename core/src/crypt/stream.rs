//! Sealed files: a file of any size sealed and opened in constant memory.
//!
//! `MAGIC (4) | header | nonce prefix (7) | segments`. The plaintext is cut
//! into segments of [`SEGMENT_BYTES`] (the last one shorter, possibly empty),
//! each sealed with AES-256-GCM under the file's data key — the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár): the nonce is the
//! prefix, the segment's counter (4 bytes, big-endian) and a last-segment
//! flag byte. A segment therefore opens only at its own position, and only
//! the true last segment opens as last: a file cut short (even at a segment
//! boundary), reordered or extended is refused. The AAD holds the header
//! and the caller's context, as for sealed values.
//!
//! [`SealedReader`] seeks (a decoder probes the container and jumps): a
//! segment is opened when a read reaches it, one at a time.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::Aes256Gcm;
use zeroize::Zeroizing;

use super::{decode_header, fill_random, CryptError, Sealer, NONCE_BYTES, TAG_BYTES};

/// What a sealed file starts with.
pub const MAGIC: &[u8; 4] = b"MMTS";

/// Plaintext bytes per segment.
pub const SEGMENT_BYTES: usize = 64 * 1024;

/// Bytes of the nonce prefix (nonce less counter and flag).
const PREFIX_BYTES: usize = NONCE_BYTES - 5;

/// Domain of the segments' AAD.
const STREAM_DOMAIN: &[u8] = b"mmt-stream\0";

/// Longest header read back (a wrapped key of a KMS is at most a few hundred bytes).
const HEADER_MAX: usize = 4 + 1 + 1 + 64 + 2 + u16::MAX as usize;

/// Whether `head` (a file's first bytes) starts a sealed file.
pub fn is_sealed(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// The key id a sealed file's header names, from the file's first bytes
/// (a few hundred suffice); `None` when the file is not sealed.
pub fn sealed_file_key_id(head: &[u8]) -> Result<Option<String>, CryptError> {
    if !is_sealed(head) {
        return Ok(None);
    }
    Ok(Some(
        decode_header(&head[MAGIC.len()..], "a sealed file")?
            .0
            .key_id,
    ))
}

/// The first bytes of the file at `path` (at most `max`).
fn read_head(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(max);
    File::open(path)?.take(max as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Re-seals the file at `path` under `sealer`'s current key when it is
/// sealed under another key, or seals it when it is in clear (written before
/// encryption was on); `false` when it already was under the current key.
/// Streams through a temporary file beside it (owner-only), fsynced, then
/// renamed over it: a crash leaves the old file or the new one.
pub fn reseal_file(sealer: &Sealer, path: &Path, context: &[u8]) -> Result<bool, CryptError> {
    let head = read_head(path, 4096)?;
    let current = sealer.current_key_id();
    let sealed = sealed_file_key_id(&head)?;
    if sealed.as_deref() == Some(current.as_str()) {
        return Ok(false);
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates it mode 0600.
    let temporary = tempfile::Builder::new()
        .prefix("reseal-")
        .suffix(".partial")
        .tempfile_in(dir)?;
    let mut writer = SealedWriter::new(sealer, temporary, context)?;
    let file = File::open(path)?;
    if sealed.is_some() {
        io::copy(&mut SealedReader::new(sealer, file, context)?, &mut writer)?;
    } else {
        io::copy(&mut io::BufReader::new(file), &mut writer)?;
    }
    let temporary = writer.finish()?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|err| err.error)?;
    File::open(dir)?.sync_all()?;
    Ok(true)
}

fn nonce(prefix: &[u8; PREFIX_BYTES], counter: u32, last: bool) -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    nonce[..PREFIX_BYTES].copy_from_slice(prefix);
    nonce[PREFIX_BYTES..PREFIX_BYTES + 4].copy_from_slice(&counter.to_be_bytes());
    nonce[NONCE_BYTES - 1] = u8::from(last);
    nonce
}

fn stream_aad(header: &[u8], prefix: &[u8], context: &[u8]) -> Vec<u8> {
    [STREAM_DOMAIN, MAGIC, header, prefix, context].concat()
}

fn tampered() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        CryptError::Tampered {
            what: "a sealed file",
        },
    )
}

/// Seals what is written to it into `inner`; [`SealedWriter::finish`] seals
/// the last segment (without it the file does not open: it is incomplete).
pub struct SealedWriter<W: Write> {
    inner: W,
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX_BYTES],
    aad: Vec<u8>,
    buffer: Zeroizing<Vec<u8>>,
    counter: u32,
}

impl<W: Write> std::fmt::Debug for SealedWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWriter")
            .field("segments", &self.counter)
            .finish_non_exhaustive()
    }
}

impl<W: Write> SealedWriter<W> {
    /// Writes the file's header to `inner` under a fresh data key bound to `context`.
    pub fn new(sealer: &Sealer, mut inner: W, context: &[u8]) -> Result<Self, CryptError> {
        let (data_key, header) = sealer.new_data_key()?;
        let mut prefix = [0u8; PREFIX_BYTES];
        fill_random(&mut prefix)?;
        inner.write_all(MAGIC)?;
        inner.write_all(&header)?;
        inner.write_all(&prefix)?;
        Ok(Self {
            inner,
            cipher: data_key.cipher(),
            aad: stream_aad(&header, &prefix, context),
            prefix,
            buffer: Zeroizing::new(Vec::with_capacity(SEGMENT_BYTES)),
            counter: 0,
        })
    }

    fn seal_segment(&mut self, last: bool) -> io::Result<()> {
        let nonce = nonce(&self.prefix, self.counter, last);
        let sealed = self
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: &self.buffer,
                    aad: &self.aad,
                },
            )
            .map_err(|_| io::Error::other("sealing a segment failed"))?;
        self.inner.write_all(&sealed)?;
        self.buffer.clear();
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("a sealed file is limited to 2^32 segments"))?;
        Ok(())
    }

    /// Seals the last segment, flushes, and hands back the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_segment(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// The inner writer (to sync a file).
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if bytes.is_empty() {
            return Ok(0);
        }
        // A full segment is sealed only once more follows: the last segment
        // must be sealed as last, and may be full.
        if self.buffer.len() == SEGMENT_BYTES {
            self.seal_segment(false)?;
        }
        let taken = bytes.len().min(SEGMENT_BYTES - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Opens a sealed file as a seekable stream of its plaintext.
pub struct SealedReader<R: Read + Seek> {
    inner: R,
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX_BYTES],
    aad: Vec<u8>,
    body_start: u64,
    segments: u64,
    plain_len: u64,
    position: u64,
    /// The segment last opened: its index and plaintext.
    cached: Option<(u64, Zeroizing<Vec<u8>>)>,
}

impl<R: Read + Seek> std::fmt::Debug for SealedReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedReader")
            .field("plain_len", &self.plain_len)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Seek> SealedReader<R> {
    /// Reads the header, unwraps the data key and checks the file's length;
    /// segments are authenticated as they are read.
    pub fn new(sealer: &Sealer, mut inner: R, context: &[u8]) -> Result<Self, CryptError> {
        let file_len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        let mut head = vec![
            0u8;
            usize::try_from(file_len)
                .unwrap_or(HEADER_MAX)
                .min(HEADER_MAX)
        ];
        inner.read_exact(&mut head)?;
        if !is_sealed(&head) {
            return Err(CryptError::malformed(
                "a sealed file",
                "it does not start as one",
            ));
        }
        let (wrapped, header_len) = decode_header(&head[MAGIC.len()..], "a sealed file")?;
        let header = &head[MAGIC.len()..MAGIC.len() + header_len];
        let prefix: [u8; PREFIX_BYTES] = head
            .get(MAGIC.len() + header_len..MAGIC.len() + header_len + PREFIX_BYTES)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| CryptError::malformed("a sealed file", "its header is truncated"))?;
        let body_start = (MAGIC.len() + header_len + PREFIX_BYTES) as u64;
        let sealed_segment = (SEGMENT_BYTES + TAG_BYTES) as u64;
        let body = file_len - body_start;
        // At least one segment (the last, possibly empty), and the last at
        // least a tag: anything else was cut short.
        let segments = body.div_ceil(sealed_segment).max(1);
        let last_len = body - (segments - 1) * sealed_segment;
        if last_len < TAG_BYTES as u64 {
            return Err(CryptError::Tampered {
                what: "a sealed file",
            });
        }
        let data_key = sealer.provider.unwrap(&wrapped)?;
        let aad = stream_aad(header, &prefix, context);
        Ok(Self {
            inner,
            cipher: data_key.cipher(),
            prefix,
            aad,
            body_start,
            segments,
            plain_len: body - segments * TAG_BYTES as u64,
            position: 0,
            cached: None,
        })
    }

    /// Bytes of plaintext.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// Reads segment `index` (authenticated) into the cache.
    fn load(&mut self, index: u64) -> io::Result<()> {
        if matches!(&self.cached, Some((cached, _)) if *cached == index) {
            return Ok(());
        }
        let sealed_segment = (SEGMENT_BYTES + TAG_BYTES) as u64;
        let start = index * sealed_segment;
        let body = self.plain_len + self.segments * TAG_BYTES as u64;
        let len = sealed_segment.min(body - start);
        self.inner.seek(SeekFrom::Start(self.body_start + start))?;
        let mut sealed = vec![0u8; usize::try_from(len).map_err(|_| tampered())?];
        self.inner.read_exact(&mut sealed)?;
        let counter = u32::try_from(index).map_err(|_| tampered())?;
        let last = index + 1 == self.segments;
        let plain = self
            .cipher
            .decrypt(
                &nonce(&self.prefix, counter, last).into(),
                Payload {
                    msg: &sealed,
                    aad: &self.aad,
                },
            )
            .map_err(|_| tampered())?;
        self.cached = Some((index, Zeroizing::new(plain)));
        Ok(())
    }

    /// Reads the whole plaintext, authenticating every segment (a check of a file).
    pub fn verify_all(&mut self) -> io::Result<u64> {
        let mut total = 0;
        for index in 0..self.segments {
            self.load(index)?;
            total += self
                .cached
                .as_ref()
                .map_or(0, |(_, plain)| plain.len() as u64);
        }
        Ok(total)
    }
}

impl<R: Read + Seek> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.position >= self.plain_len {
            return Ok(0);
        }
        let index = self.position / SEGMENT_BYTES as u64;
        self.load(index)?;
        let Some((_, plain)) = &self.cached else {
            return Err(tampered());
        };
        let offset = (self.position % SEGMENT_BYTES as u64) as usize;
        let available = plain.get(offset..).ok_or_else(tampered)?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for SealedReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.plain_len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        let target = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.position = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::{KeyProvider, Keyring};
    use std::io::Cursor;
    use std::sync::Arc;

    fn sealer() -> (Sealer, Keyring) {
        let keyring = Keyring::generate().unwrap();
        (Sealer::new(Arc::new(keyring.clone())), keyring)
    }

    fn seal(sealer: &Sealer, plain: &[u8], piece: usize) -> Vec<u8> {
        let mut writer = SealedWriter::new(sealer, Vec::new(), b"clinic-a").unwrap();
        for chunk in plain.chunks(piece.max(1)) {
            writer.write_all(chunk).unwrap();
        }
        writer.finish().unwrap()
    }

    fn open(sealer: &Sealer, sealed: &[u8]) -> io::Result<Vec<u8>> {
        let mut reader = SealedReader::new(sealer, Cursor::new(sealed), b"clinic-a")
            .map_err(io::Error::other)?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    fn audio(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn files_of_every_shape_round_trip() {
        let (sealer, _) = sealer();
        for len in [
            0,
            1,
            SEGMENT_BYTES - 1,
            SEGMENT_BYTES,
            SEGMENT_BYTES + 1,
            3 * SEGMENT_BYTES,
        ] {
            let plain = audio(len);
            for piece in [1000, SEGMENT_BYTES, 7 * SEGMENT_BYTES] {
                let sealed = seal(&sealer, &plain, piece);
                assert!(is_sealed(&sealed));
                let opened = open(&sealer, &sealed).unwrap();
                assert_eq!(opened.len(), len);
                assert!(opened == plain, "length {len}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_sealed_file_hides_its_content_and_seeks() {
        let (sealer, _) = sealer();
        let mut plain = audio(2 * SEGMENT_BYTES + 500);
        plain[SEGMENT_BYTES + 10..SEGMENT_BYTES + 25].copy_from_slice(b"Smith John 1970");
        let sealed = seal(&sealer, &plain, 4096);
        assert!(!sealed.windows(10).any(|w| w == b"Smith John"));
        let mut reader = SealedReader::new(&sealer, Cursor::new(&sealed), b"clinic-a").unwrap();
        assert_eq!(reader.plain_len(), plain.len() as u64);
        reader
            .seek(SeekFrom::Start(SEGMENT_BYTES as u64 + 10))
            .unwrap();
        let mut name = [0u8; 15];
        reader.read_exact(&mut name).unwrap();
        assert_eq!(&name, b"Smith John 1970");
        reader.seek(SeekFrom::End(-3)).unwrap();
        let mut tail = Vec::new();
        reader.read_to_end(&mut tail).unwrap();
        assert_eq!(tail, plain[plain.len() - 3..]);
        assert_eq!(reader.verify_all().unwrap(), plain.len() as u64);
    }

    #[test]
    fn truncated_extended_or_altered_files_are_refused() {
        let (sealer, _) = sealer();
        let plain = audio(2 * SEGMENT_BYTES + 100);
        let sealed = seal(&sealer, &plain, SEGMENT_BYTES);
        let header = sealed.len() - (plain.len() + 3 * TAG_BYTES);
        let boundary = header + 2 * (SEGMENT_BYTES + TAG_BYTES);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut at a segment boundary", sealed[..boundary].to_vec()),
            ("cut mid-segment", sealed[..sealed.len() - 50].to_vec()),
            ("cut to the header", sealed[..header].to_vec()),
            ("extended", [&sealed[..], &[0u8; 40][..]].concat()),
            ("a flipped bit", {
                let mut s = sealed.clone();
                s[header + SEGMENT_BYTES] ^= 0x80;
                s
            }),
            ("segments swapped", {
                let seg = SEGMENT_BYTES + TAG_BYTES;
                let mut s = sealed.clone();
                let first = sealed[header..header + seg].to_vec();
                let second = sealed[header + seg..header + 2 * seg].to_vec();
                s[header..header + seg].copy_from_slice(&second);
                s[header + seg..header + 2 * seg].copy_from_slice(&first);
                s
            }),
        ];
        for (case, bytes) in cases {
            let err = open(&sealer, &bytes).expect_err(case);
            assert!(
                err.to_string().contains("authentication") || err.to_string().contains("truncated"),
                "{case}: {err}"
            );
        }
        // Another context (another tenant's file) does not open either.
        let err = SealedReader::new(&sealer, Cursor::new(&sealed), b"clinic-b")
            .unwrap()
            .verify_all()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn files_in_clear_or_under_an_old_key_are_resealed_under_the_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let (sealer, mut keyring) = sealer();
        let clear = dir.path().join("clear.audio");
        std::fs::write(&clear, b"clear audio of Smith").unwrap();
        let old = dir.path().join("old.audio");
        std::fs::write(&old, seal(&sealer, b"old audio", 100)).unwrap();
        keyring.rotate().unwrap();
        let rotated = Sealer::new(Arc::new(keyring.clone()));
        let current = rotated.current_key_id();
        for (path, plain) in [(&clear, &b"clear audio of Smith"[..]), (&old, b"old audio")] {
            assert!(reseal_file(&rotated, path, b"clinic-a").unwrap());
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(sealed_file_key_id(&bytes).unwrap(), Some(current.clone()));
            assert_eq!(open(&rotated, &bytes).unwrap(), plain);
            assert!(
                !reseal_file(&rotated, path, b"clinic-a").unwrap(),
                "already current"
            );
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no leftovers"
        );
    }

    #[test]
    fn a_file_under_a_retired_key_is_refused_at_open() {
        let (sealer, mut keyring) = sealer();
        let sealed = seal(&sealer, b"old audio", 100);
        let old = keyring.current_key_id();
        keyring.rotate().unwrap();
        let rotated = Sealer::new(Arc::new(keyring.clone()));
        assert_eq!(open(&rotated, &sealed).unwrap(), b"old audio");
        keyring.retire(&old).unwrap();
        let retired = Sealer::new(Arc::new(keyring));
        let err = SealedReader::new(&retired, Cursor::new(&sealed), b"clinic-a").unwrap_err();
        assert!(matches!(err, CryptError::RetiredKey { .. }), "{err}");
    }
}

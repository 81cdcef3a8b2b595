//! Job identity for idempotency: the same audio from the same tenant is the
//! same job, however often it is delivered; another tenant's identical audio is
//! a different job.

use mmt_core::job::JobId;
use sha2::{Digest, Sha256};

/// Hex digits of a job id (128 bits of SHA-256).
pub const JOB_ID_HEX_LEN: usize = 32;

/// Hex digits of a correlation id (64 bits of SHA-256).
pub const CORRELATION_ID_HEX_LEN: usize = 16;

/// The hex SHA-256 of the audio bytes (64 lowercase hex digits); streamed
/// input hashes with [`ContentHasher`] to the same value.
pub use mmt_core::content::{content_hash, ContentHasher};

/// [`content_hash`] of everything `reader` yields, read in blocks (a long
/// recording is never held in memory to be hashed).
pub fn content_hash_of(mut reader: impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = ContentHasher::default();
    let mut block = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut block) {
            Ok(0) => break,
            Ok(n) => hasher.update(&block[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(hasher.finish())
}

/// The job's id: the first 32 hex digits of SHA-256(`tenant` ‖ 0x00 ‖
/// `content_hash`). The zero byte keeps `("ab", "c…")` and `("a", "bc…")` apart.
pub fn job_id(tenant: &str, content_hash: &str) -> JobId {
    let digest = Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update([0u8])
        .chain_update(content_hash.as_bytes())
        .finalize();
    let mut id = hex::encode(digest);
    id.truncate(JOB_ID_HEX_LEN);
    JobId(id)
}

/// A short id for the traces of one attempt at a job: the first 16 hex digits of
/// SHA-256(job id ‖ 0x00 ‖ `attempt_nonce` as 8 little-endian bytes). Callers pass
/// a fresh nonce per attempt (a delivery tag, a counter, a timestamp).
pub fn correlation_id(job_id: &JobId, attempt_nonce: u64) -> String {
    let digest = Sha256::new()
        .chain_update(job_id.0.as_bytes())
        .chain_update([0u8])
        .chain_update(attempt_nonce.to_le_bytes())
        .finalize();
    let mut id = hex::encode(digest);
    id.truncate(CORRELATION_ID_HEX_LEN);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn content_hash_is_hex_sha256() {
        assert_eq!(content_hash(b"abc"), ABC_SHA256);
        let empty = content_hash(b"");
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(empty.len(), 64);
        assert!(empty
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn a_streamed_hash_equals_the_hash_of_the_bytes() {
        let long: Vec<u8> = (0..200_003u32).map(|i| (i % 251) as u8).collect();
        for bytes in [&b""[..], b"abc", &long] {
            assert_eq!(content_hash_of(bytes).expect("hash"), content_hash(bytes));
        }
    }

    #[test]
    fn job_id_is_stable() {
        // Known vector, computed independently (Python hashlib).
        let id = job_id("acme", ABC_SHA256);
        assert_eq!(id, JobId("77906c82211d10be935c4070bd4a7c7f".into()));
        assert_eq!(id.0.len(), JOB_ID_HEX_LEN);
        assert_eq!(job_id("acme", &content_hash(b"abc")), id);
    }

    #[test]
    fn tenants_are_separated() {
        let hash = content_hash(b"the same audio");
        assert_ne!(job_id("acme", &hash), job_id("globex", &hash));
        assert_ne!(job_id("ab", "c"), job_id("a", "bc"));
        assert_ne!(
            job_id("acme", &hash),
            job_id("acme", &content_hash(b"other"))
        );
    }

    #[test]
    fn correlation_ids_are_short_and_per_attempt() {
        let id = job_id("acme", ABC_SHA256);
        let first = correlation_id(&id, 7);
        assert_eq!(first, "d8cdbb3302f0211c");
        assert_eq!(first.len(), CORRELATION_ID_HEX_LEN);
        assert_eq!(correlation_id(&id, 7), first);
        assert_ne!(correlation_id(&id, 8), first);
        assert_ne!(correlation_id(&job_id("globex", ABC_SHA256), 7), first);
    }
}

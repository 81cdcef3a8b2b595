//! The operators of the transcription dataflow, as extension traits on timely
//! streams, and the per-record logic they wrap.
//!
//! In stream order: [`decode`] (bytes → spooled samples and their speech
//! chunks, see [`samples`]; bad input → dead letter),
//! [`dedupe`] (exchange by job; one job per tenant and content), [`split`]
//! (voice activity → ≤ 30 s speech chunks, see [`chunk`]), [`infer`] (cross-job
//! batches on ONNX Runtime), [`assemble`] (exchange by job; chunks in order →
//! transcript) and [`commit`] (documents, audit, dead letters, job store).
//! [`records`] holds what flows between them; [`identity`] derives job ids.

// `Result<Record, Outcome>` here routes records to one of two streams (timely's
// `ok_err`), it is not error propagation: both sides are ordinary records.
#![allow(clippy::result_large_err)]

pub mod assemble;
pub mod chunk;
pub mod commit;
pub mod decode;
pub mod dedupe;
pub mod identity;
pub mod infer;
pub mod records;
pub mod samples;
pub mod split;

//! Limits on the recordings accepted.

use serde::Serialize;

use super::vars::Vars;
use super::{Environment, Problem};

const MMT_MAX_AUDIO_SECONDS: &str = "MMT_MAX_AUDIO_SECONDS";

/// The default limit: 4 hours, the longest recording AWS Transcribe Medical takes.
pub const DEFAULT_MAX_AUDIO_SECONDS: u32 = 4 * 3600;

/// Decoded audio spooled to temporary disk per hour of recording (16 kHz `f32`).
const SPOOL_MB_PER_HOUR: u64 = 16_000 * 4 * 3600 / 1_000_000;

/// Limits on the recordings accepted.
#[derive(Debug, Clone, Serialize)]
pub struct AudioConfig {
    /// `MMT_MAX_AUDIO_SECONDS`: the longest recording transcribed, in seconds.
    /// A longer one is dead-lettered (`mmt transcribe`: an error for that file)
    /// as soon as its header declares it or decoding passes the limit, without
    /// reading the rest. Default 14400 (4 h); at least 1.
    pub max_audio_seconds: u32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            max_audio_seconds: DEFAULT_MAX_AUDIO_SECONDS,
        }
    }
}

impl AudioConfig {
    pub(super) fn from_vars(vars: &mut Vars) -> Self {
        Self {
            max_audio_seconds: vars.u32(MMT_MAX_AUDIO_SECONDS, DEFAULT_MAX_AUDIO_SECONDS),
        }
    }

    pub(super) fn validate(&self, _env: Environment, out: &mut Vec<Problem>) {
        if self.max_audio_seconds == 0 {
            out.push(Problem::fatal(
                MMT_MAX_AUDIO_SECONDS,
                "must be at least 1 (0 would refuse every recording)",
            ));
        } else if self.max_audio_seconds > DEFAULT_MAX_AUDIO_SECONDS {
            let spool_mb = u64::from(self.max_audio_seconds) * SPOOL_MB_PER_HOUR / 3600;
            out.push(Problem::warning(
                MMT_MAX_AUDIO_SECONDS,
                format!(
                    "is above 4 h ({DEFAULT_MAX_AUDIO_SECONDS} s): a recording this long \
                     spools up to {spool_mb} MB of decoded audio to temporary disk while \
                     it is transcribed"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(value: Option<&str>) -> (AudioConfig, Vec<Problem>) {
        let vars = value.map(|v| (MMT_MAX_AUDIO_SECONDS.to_owned(), v.to_owned()));
        let mut vars = Vars::new(vars);
        let config = AudioConfig::from_vars(&mut vars);
        let mut out = vars.into_problems();
        config.validate(Environment::Dev, &mut out);
        (config, out)
    }

    #[test]
    fn the_limit_defaults_to_four_hours_and_must_be_positive() {
        let (config, out) = problems(None);
        assert_eq!(config.max_audio_seconds, 14_400);
        assert!(out.is_empty(), "{out:?}");
        let (config, out) = problems(Some("600"));
        assert_eq!(config.max_audio_seconds, 600);
        assert!(out.is_empty(), "{out:?}");
        let (_, out) = problems(Some("0"));
        assert!(out.iter().any(Problem::is_fatal), "{out:?}");
        let (_, out) = problems(Some("four hours"));
        assert!(out.iter().any(Problem::is_fatal), "{out:?}");
        let (config, out) = problems(Some("86400"));
        assert_eq!(config.max_audio_seconds, 86_400);
        assert!(
            out.iter().all(|p| !p.is_fatal()) && !out.is_empty(),
            "a warning: {out:?}"
        );
    }
}

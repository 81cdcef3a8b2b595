//! Values that must never reach a log: the secret wrapper, and URL redaction.

use std::fmt;

use serde::{Serialize, Serializer};

/// What a redacted value prints as.
pub const REDACTED: &str = "[REDACTED]";

/// A secret string. `Debug` and `Serialize` print [`REDACTED`]; there is no
/// `Display`. Read the value with [`Secret::expose`], only where it is used.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: pass it to the code that needs it, never to a formatter.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in characters (the length of a secret is not secret enough to hide
    /// from validation, but it is never printed).
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// `url` with the password of its user-info, and any password-like query parameter,
/// replaced by `***`. With `keep_user` false the user name goes too (some services
/// put a token there).
///
/// The user-info is taken to end at the *last* `@`, so a password holding an
/// unescaped `/`, `?`, `#` or `@` is still hidden whole.
pub fn redact_url(url: &str, keep_user: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    let Some(at) = rest.rfind('@') else {
        return format!("{scheme}://{}", redact_query(rest));
    };
    let (userinfo, host_and_rest) = (&rest[..at], &rest[at + 1..]);
    let userinfo = match (keep_user, userinfo.split_once(':')) {
        (true, Some((user, _password))) => format!("{user}:***"),
        (true, None) => userinfo.to_owned(),
        (false, _) => "***".to_owned(),
    };
    format!("{scheme}://{userinfo}@{}", redact_query(host_and_rest))
}

/// Replaces the value of every query parameter whose name looks secret.
fn redact_query(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if looks_secret(key) => format!("{key}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "key"]
        .iter()
        .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_and_serialize_are_redacted() {
        let secret = Secret::new("correct horse battery staple");
        assert_eq!(format!("{secret:?}"), "Secret([REDACTED])");
        assert_eq!(
            serde_json::to_string(&secret).ok().as_deref(),
            Some("\"[REDACTED]\"")
        );
        assert_eq!(secret.expose(), "correct horse battery staple");
        assert_eq!(secret.char_len(), 28);
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://mmt:s3cr3t@db:5432/mmt", true),
            "postgres://mmt:***@db:5432/mmt"
        );
        assert_eq!(
            redact_url("postgres://mmt@db/mmt", true),
            "postgres://mmt@db/mmt"
        );
        assert_eq!(
            redact_url("https://token@collector:4318", false),
            "https://***@collector:4318"
        );
        assert_eq!(redact_url("sqlite://mmt.db", true), "sqlite://mmt.db");
    }

    #[test]
    fn awkward_passwords_are_hidden_whole() {
        for password in ["p/ss", "p?ss", "p@ss", "p#ss", "p:ss"] {
            let url = format!("mysql://root:{password}@db/test");
            let shown = redact_url(&url, true);
            assert_eq!(shown, "mysql://root:***@db/test", "{password}");
        }
    }

    #[test]
    fn password_query_parameters_are_redacted() {
        assert_eq!(
            redact_url(
                "postgres://db/mmt?user=a&password=s3cr3t&sslmode=require",
                true
            ),
            "postgres://db/mmt?user=a&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/mmt?sslpassword=x", true),
            "postgres://db/mmt?sslpassword=***"
        );
    }
}

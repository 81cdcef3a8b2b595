//! The one redaction of secrets in what MMT logs or prints: URLs and HTTP
//! header values.
//!
//! Every URL shown to an operator (a connector's `Debug`, `mmt check --json`,
//! a start-up log line, an error) goes through [`redact_url`]; a header is
//! told to be a credential by [`is_secret_header`] (the API marks those
//! sensitive, so that no `Debug` of a request shows them). URLs are parsed with the `url` crate, never
//! split by hand: the password is masked, and so is the value of every query
//! parameter whose name looks secret ([`is_secret_name`]). A URL that cannot be
//! parsed, or whose user-info may have been cut short, is replaced whole by
//! [`UNREADABLE_URL`]: when it is unclear where the credentials end, nothing of
//! it is echoed.

use url::Url;

/// What a masked secret prints as.
pub const MASK: &str = "***";

/// What a URL that cannot be told apart safely prints as (whole).
pub const UNREADABLE_URL: &str = "[unreadable URL, not shown]";

/// Words that mark a query parameter or header name as secret, matched
/// case-insensitively anywhere in the name (so `sslpassword`, `X-Auth-Token`,
/// `SharedAccessSignature` are all secret).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "key",
    "apikey",
    "api_key",
    "access_token",
    "auth",
    "credential",
    "signature",
    "sig",
    // Cookies carry sessions.
    "cookie",
];

/// Whether a query parameter or header called `name` holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// Whether the user name of a URL is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserName {
    /// Shown: it tells an operator which account is used.
    Keep,
    /// Masked too: some services take a token as the user name.
    Mask,
}

/// `url` with its password, and the value of every secret-looking query
/// parameter, replaced by [`MASK`]; the user name is kept.
///
/// `postgres://mmt:s3cret@db/mmt?sslmode=verify-full&token=x` →
/// `postgres://mmt:***@db/mmt?sslmode=verify-full&token=***`.
pub fn redact_url(url: &str) -> String {
    redact_url_with(url, UserName::Keep)
}

/// [`redact_url`], also masking the user name when `user` says so.
pub fn redact_url_with(raw: &str, user: UserName) -> String {
    let Ok(mut url) = Url::parse(raw.trim()) else {
        return UNREADABLE_URL.to_owned();
    };
    // The user-info ends at the first `/`, `?` or `#`; a password holding one
    // of them unescaped spills into the path, query or fragment, with the
    // real host after an `@` there. Nothing of such a URL is shown.
    let spilled = [Some(url.path()), url.query(), url.fragment()]
        .into_iter()
        .flatten()
        .any(|part| part.contains('@'));
    if spilled {
        return UNREADABLE_URL.to_owned();
    }
    if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
        return UNREADABLE_URL.to_owned();
    }
    if user == UserName::Mask && !url.username().is_empty() && url.set_username(MASK).is_err() {
        return UNREADABLE_URL.to_owned();
    }
    mask_secret_query_values(&mut url);
    url.to_string()
}

/// Rewrites the query only when it holds a secret, so that every other URL
/// prints exactly as configured.
fn mask_secret_query_values(url: &mut Url) {
    if !url.query_pairs().any(|(name, _)| is_secret_name(&name)) {
        return;
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(name, value)| {
            let value = if is_secret_name(&name) {
                MASK.to_owned()
            } else {
                value.into_owned()
            };
            (name.into_owned(), value)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
}

/// Header names whose values are credentials though their names do not say
/// so in a word of [`SECRET_WORDS`].
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "set-cookie"];

/// Whether the header called `name` carries a credential (Authorization,
/// Cookie, X-Api-Key, a signature…).
pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS
        .iter()
        .any(|header| header.eq_ignore_ascii_case(name))
        || is_secret_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_and_user_names_kept() {
        for (url, shown) in [
            (
                "postgres://mmt:s3cret@db:5432/mmt",
                "postgres://mmt:***@db:5432/mmt",
            ),
            (
                "postgresql://mmt:s3cret@db.internal:5432/mmt?sslmode=require",
                "postgresql://mmt:***@db.internal:5432/mmt?sslmode=require",
            ),
            ("mariadb://mmt:s3cret@db/mmt", "mariadb://mmt:***@db/mmt"),
            ("redis://:s3cret@redis", "redis://:***@redis"),
            (
                "amqp://svc:s3cret@rabbit:5672/%2f",
                "amqp://svc:***@rabbit:5672/%2f",
            ),
            ("postgres://mmt@db/mmt", "postgres://mmt@db/mmt"),
            ("sqlite://mmt.db", "sqlite://mmt.db"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("redis:6379", "redis:6379"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn user_names_can_be_masked_too() {
        assert_eq!(
            redact_url_with("https://t0ken@collector:4318", UserName::Mask),
            "https://***@collector:4318/"
        );
        assert_eq!(
            redact_url_with("https://collector:4318", UserName::Mask),
            "https://collector:4318/"
        );
    }

    #[test]
    fn secret_looking_query_values_are_masked() {
        assert_eq!(
            redact_url("postgres://db/mmt?user=a&password=s3cret&sslmode=verify-full"),
            "postgres://db/mmt?user=a&password=***&sslmode=verify-full"
        );
        for name in [
            "password",
            "sslpassword",
            "passwd",
            "pwd",
            "client_secret",
            "token",
            "ACCESS_TOKEN",
            "apikey",
            "api_key",
            "sslkey",
            "auth",
            "credentials",
            "signature",
            "sig",
        ] {
            let shown = redact_url(&format!("https://h/p?x=1&{name}=S3CRET123&y=2"));
            assert!(!shown.contains("S3CRET123"), "{name}: {shown}");
            assert!(shown.contains("x=1") && shown.contains("y=2"), "{shown}");
        }
    }

    #[test]
    fn a_url_whose_credentials_may_be_cut_short_is_not_shown() {
        for password in ["p/ss", "p?ss", "p@ss", "p#ss", "p:ss", "s3c@r/e?t"] {
            let shown = redact_url(&format!("mysql://root:{password}@db/test"));
            assert!(!shown.contains("ss") && !shown.contains("e?t"), "{shown}");
        }
        assert_eq!(
            redact_url("postgres://mmt:s3c@r/e?t@db/mmt"),
            UNREADABLE_URL
        );
    }

    #[test]
    fn unparseable_text_is_never_echoed() {
        for text in ["", "not a url", "guest:guest@rabbit", "://x:y@z", "db host"] {
            let shown = redact_url(text);
            assert!(
                shown == UNREADABLE_URL || !shown.contains("guest"),
                "{text}: {shown}"
            );
        }
        assert_eq!(redact_url("not a url"), UNREADABLE_URL);
        assert_eq!(redact_url("guest:guest@rabbit"), UNREADABLE_URL);
    }

    #[test]
    fn credential_headers_are_told_apart() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "Set-Cookie",
            "X-Api-Key",
            "X-Auth-Token",
            "MMT-Signature",
        ] {
            assert!(is_secret_header(name), "{name}");
        }
        for name in ["Content-Type", "traceparent", "Accept", "Expect"] {
            assert!(!is_secret_header(name), "{name}");
        }
    }
}

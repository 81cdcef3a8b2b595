//! `ENV`: which kind of deployment this is.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::problem::Severity;

/// The deployment environment, from `ENV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer's machine (the default): SQLite and missing secrets allowed.
    #[default]
    Dev,
    /// Automated tests: the same conveniences as `dev`.
    Test,
    /// A production-like rehearsal: what `prod` forbids is reported as a warning.
    Staging,
    /// Production: every rule applies at full strength.
    Prod,
}

impl Environment {
    /// The form a problem message asks for.
    pub const EXPECTED: &'static str =
        "one of dev, test, staging, prod (or development, production)";

    /// Whether this is production.
    pub fn is_prod(self) -> bool {
        self == Self::Prod
    }

    /// The severity of a rule that protects production: fatal in `prod`, a warning in
    /// `staging` (so a rehearsal shows what production would refuse), nothing in
    /// `dev` and `test`.
    pub fn production_rule(self) -> Option<Severity> {
        match self {
            Self::Prod => Some(Severity::Fatal),
            Self::Staging => Some(Severity::Warning),
            Self::Dev | Self::Test => None,
        }
    }

    /// The canonical name, as `ENV` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Test => "test",
            Self::Staging => "staging",
            Self::Prod => "prod",
        }
    }
}

impl FromStr for Environment {
    type Err = ();

    /// Case-insensitive; `development` and `production` are aliases.
    fn from_str(value: &str) -> Result<Self, ()> {
        match value.trim().to_ascii_lowercase().as_str() {
            "dev" | "development" => Ok(Self::Dev),
            "test" => Ok(Self::Test),
            "staging" => Ok(Self::Staging),
            "prod" | "production" => Ok(Self::Prod),
            _ => Err(()),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        let cases = [
            ("dev", Environment::Dev),
            ("Development", Environment::Dev),
            ("test", Environment::Test),
            ("STAGING", Environment::Staging),
            ("prod", Environment::Prod),
            ("production", Environment::Prod),
        ];
        for (name, env) in cases {
            assert_eq!(name.parse(), Ok(env), "{name}");
        }
        assert_eq!("prd".parse::<Environment>(), Err(()));
        assert_eq!(Environment::default(), Environment::Dev);
    }
}

//! Reading typed values out of a set of environment variables, collecting every
//! problem instead of stopping at the first.

use std::collections::BTreeMap;
use std::time::Duration;

use super::problem::Problem;

/// What a problem with a rejected value adds to the expected form.
///
/// No rejected value is ever quoted back, whatever its kind: problems reach
/// logs and `mmt check`'s output, and an operator may paste anything into a
/// variable (a password into the wrong one, a patient's name into a test
/// setting). The message names the variable and the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Echo {
    /// Nothing more (a number, a mode name).
    Value,
    /// That the value may hold a secret (a password, a token, credentials in
    /// a URL), so the operator looks for one.
    Never,
}

/// The variables being read, and the problems found so far.
///
/// Values are trimmed; an empty value counts as unset, as operators expect from
/// `FOO=` lines in env files.
#[derive(Debug, Default)]
pub(super) struct Vars {
    values: BTreeMap<String, String>,
    problems: Vec<Problem>,
}

impl Vars {
    pub(super) fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let values = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let value = value.trim();
                (!value.is_empty()).then(|| (name, value.to_owned()))
            })
            .collect();
        Self {
            values,
            problems: Vec::new(),
        }
    }

    /// Records a problem found while reading.
    pub(super) fn report(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// The names of every variable that is set.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Whether `name` is set to a non-empty value.
    pub(super) fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The trimmed value of `name`, if set.
    pub(super) fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    /// Parses `name` with `parse`. Unset gives `None`; a value `parse` rejects gives
    /// `None` and records a fatal problem naming `expected`.
    pub(super) fn parse<T>(
        &mut self,
        name: &'static str,
        expected: &str,
        echo: Echo,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let raw = self.values.get(name)?;
        let parsed = parse(raw);
        if parsed.is_none() {
            let message = match echo {
                Echo::Value => format!("expected {expected} (the value is not shown)"),
                Echo::Never => {
                    format!("expected {expected} (value not shown: it may hold a secret)")
                }
            };
            self.problems.push(Problem::fatal(name, message));
        }
        parsed
    }

    /// A boolean, see [`parse_bool`].
    pub(super) fn bool(&mut self, name: &'static str, default: bool) -> bool {
        self.parse(name, "true/false, yes/no or 1/0", Echo::Value, parse_bool)
            .unwrap_or(default)
    }

    /// A whole number from 0 to 4294967295.
    pub(super) fn u32(&mut self, name: &'static str, default: u32) -> u32 {
        self.parse(name, "a whole number (0 to 4294967295)", Echo::Value, |s| {
            s.parse().ok()
        })
        .unwrap_or(default)
    }

    /// A finite number of at least 0, fractions allowed (`1`, `0.5`).
    pub(super) fn number(&mut self, name: &'static str, default: f64) -> f64 {
        self.parse(
            name,
            "a number of at least 0, e.g. 1 or 0.5",
            Echo::Value,
            parse_non_negative,
        )
        .unwrap_or(default)
    }

    /// A duration given as a number of seconds, fractions allowed (`2`, `0.5`).
    pub(super) fn seconds(&mut self, name: &'static str, default: Duration) -> Duration {
        self.parse(
            name,
            "a non-negative number of seconds, e.g. 2 or 0.5",
            Echo::Value,
            parse_seconds,
        )
        .unwrap_or(default)
    }

    /// A duration given as a whole number of seconds.
    pub(super) fn whole_seconds(&mut self, name: &'static str, default: Duration) -> Duration {
        self.parse(
            name,
            "a whole number of seconds, e.g. 86400",
            Echo::Value,
            |s| s.parse().ok().map(Duration::from_secs),
        )
        .unwrap_or(default)
    }

    /// A duration given as a whole number of milliseconds (the OpenTelemetry unit).
    pub(super) fn millis(&mut self, name: &'static str, default: Duration) -> Duration {
        self.parse(
            name,
            "a whole number of milliseconds, e.g. 10000",
            Echo::Value,
            |s| s.parse().ok().map(Duration::from_millis),
        )
        .unwrap_or(default)
    }

    /// The problems found while reading.
    pub(super) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

/// Parses a boolean the way operators write one: `true`/`false`, `yes`/`no`,
/// `1`/`0`, case-insensitively, surrounding spaces ignored.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// A finite number of at least 0.
fn parse_non_negative(value: &str) -> Option<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
}

/// A non-negative, finite number of seconds.
fn parse_seconds(value: &str) -> Option<Duration> {
    Duration::try_from_secs_f64(parse_non_negative(value)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn bools_accept_the_usual_spellings_case_insensitively() {
        for yes in ["true", "TRUE", "True", "yes", "YES", "1", " true "] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["false", "FALSE", "no", "No", "0"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in ["", "on", "off", "2", "y", "tru", "yes please"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_unparsable_bool_is_fatal_names_the_form_and_falls_back() {
        let mut v = vars(&[("X_ENABLED", "maybe")]);
        assert!(v.bool("X_ENABLED", true));
        let problems = v.into_problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].severity, Severity::Fatal);
        assert_eq!(problems[0].variable, "X_ENABLED");
        assert!(problems[0].message.contains("true/false"));
        assert!(!problems[0].message.contains("maybe"));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let mut v = vars(&[("N", "   ")]);
        assert!(!v.is_set("N"));
        assert_eq!(v.u32("N", 7), 7);
        assert!(v.into_problems().is_empty());
    }

    #[test]
    fn secret_values_are_never_quoted() {
        let mut v = vars(&[("S", "hunter2")]);
        assert_eq!(v.parse("S", "a thing", Echo::Never, |_| None::<()>), None);
        let problems = v.into_problems();
        assert!(!problems[0].message.contains("hunter2"));
    }

    #[test]
    fn seconds_accept_fractions_and_reject_negatives() {
        let mut v = vars(&[("A", "0.5"), ("B", "-1"), ("C", "NaN"), ("D", "inf")]);
        let d = Duration::from_secs(9);
        assert_eq!(v.seconds("A", d), Duration::from_millis(500));
        assert_eq!(v.seconds("B", d), d);
        assert_eq!(v.seconds("C", d), d);
        assert_eq!(v.seconds("D", d), d);
        assert_eq!(v.into_problems().len(), 3);
    }

    #[test]
    fn numbers_accept_fractions_and_reject_negatives_and_non_finite_values() {
        let mut v = vars(&[
            ("A", "0.5"),
            ("B", "-1"),
            ("C", "NaN"),
            ("D", "inf"),
            ("E", "2"),
        ]);
        assert_eq!(v.number("A", 9.0), 0.5);
        assert_eq!(v.number("B", 9.0), 9.0);
        assert_eq!(v.number("C", 9.0), 9.0);
        assert_eq!(v.number("D", 9.0), 9.0);
        assert_eq!(v.number("E", 9.0), 2.0);
        assert_eq!(v.number("UNSET", 9.0), 9.0);
        assert_eq!(v.into_problems().len(), 3);
    }

    #[test]
    fn no_value_is_ever_quoted() {
        let canary = "Smith John 1958-03-12";
        let mut v = vars(&[("B", canary), ("N", canary), ("S", canary), ("M", canary)]);
        v.bool("B", false);
        v.u32("N", 1);
        v.seconds("S", Duration::ZERO);
        v.millis("M", Duration::ZERO);
        let problems = v.into_problems();
        assert_eq!(problems.len(), 4);
        for problem in problems {
            assert!(!problem.to_string().contains("Smith"), "{problem}");
        }
    }
}

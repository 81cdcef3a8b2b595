//! Problems found while reading or validating the configuration, and the report
//! that renders all of them at once.

use std::fmt;

use serde::Serialize;

use super::Environment;

/// How serious a configuration problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Start-up must be refused.
    Fatal,
    /// Start-up may proceed, but an operator should look.
    Warning,
}

impl Severity {
    /// The upper-case label used at the start of a report line.
    pub fn label(self) -> &'static str {
        match self {
            Self::Fatal => "FATAL",
            Self::Warning => "WARNING",
        }
    }
}

/// One problem with one environment variable.
///
/// Messages name the variable and the expected form; they never quote the value of a
/// secret-bearing variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The environment variable at fault (for cross-variable rules, the one to change).
    pub variable: &'static str,
    /// What is wrong and what is expected, in operator terms.
    pub message: String,
    /// Whether this problem refuses start-up.
    pub severity: Severity,
}

impl Problem {
    /// A problem that refuses start-up.
    pub fn fatal(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
            severity: Severity::Fatal,
        }
    }

    /// A problem worth an operator's attention that does not refuse start-up.
    pub fn warning(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
            severity: Severity::Warning,
        }
    }

    /// Whether this problem refuses start-up.
    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.label(),
            self.variable,
            self.message
        )
    }
}

/// Every problem found in one configuration, fatal ones first.
///
/// Start-up policy: any [`Severity::Fatal`] problem refuses start-up, in every
/// environment. The development conveniences are not exceptions to that rule; they
/// are rules whose severity depends on `ENV` (see the module documentation), so a
/// problem that is fatal in `prod` is a warning, or no problem at all, in `dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    environment: Environment,
    problems: Vec<Problem>,
}

impl Report {
    /// A report of `problems` found for `environment`, fatal ones first (otherwise
    /// in the order found).
    pub fn new(environment: Environment, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| p.severity);
        Self {
            environment,
            problems,
        }
    }

    /// The environment the problems were judged for.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// Every problem, fatal ones first.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether no problem at all was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// How many problems refuse start-up.
    pub fn fatal_count(&self) -> usize {
        self.problems.iter().filter(|p| p.is_fatal()).count()
    }

    /// How many problems are warnings.
    pub fn warning_count(&self) -> usize {
        self.problems.len() - self.fatal_count()
    }

    /// Whether start-up must be refused: any fatal problem, in any environment.
    pub fn refuses_start(&self) -> bool {
        self.fatal_count() > 0
    }

    /// One line summing the report up, e.g.
    /// `ENV=prod: 2 fatal, 1 warning: start-up refused`.
    pub fn summary(&self) -> String {
        let verdict = if self.refuses_start() {
            "start-up refused"
        } else {
            "start-up allowed"
        };
        format!(
            "ENV={}: {} fatal, {} warning(s): {verdict}",
            self.environment,
            self.fatal_count(),
            self.warning_count()
        )
    }
}

/// One line per problem, `FATAL VARIABLE: message` or `WARNING VARIABLE: message`.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Start-up was refused; the report holds every problem, not only the first.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// At least one fatal problem.
    #[error("invalid configuration ({}):\n{report}", report.summary())]
    Refused {
        /// Every problem found, fatal ones first.
        report: Report,
    },
}

impl ConfigError {
    /// The report behind the refusal.
    pub fn report(&self) -> &Report {
        match self {
            Self::Refused { report } => report,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_one_line_per_problem_fatal_first() {
        let report = Report::new(
            Environment::Prod,
            vec![
                Problem::warning("EXTERNAL_REDIS_HOST", "points at localhost"),
                Problem::fatal("RETENTION_DAYS", "must be at least 1"),
            ],
        );
        assert_eq!(
            report.to_string(),
            "FATAL RETENTION_DAYS: must be at least 1\n\
             WARNING EXTERNAL_REDIS_HOST: points at localhost\n"
        );
        assert!(report.refuses_start());
        assert_eq!(report.fatal_count(), 1);
        assert_eq!(report.warning_count(), 1);
        assert_eq!(
            report.summary(),
            "ENV=prod: 1 fatal, 1 warning(s): start-up refused"
        );
    }

    #[test]
    fn warnings_alone_do_not_refuse_start() {
        let report = Report::new(
            Environment::Dev,
            vec![Problem::warning("INTERNAL_JWT_SECRET", "short")],
        );
        assert!(!report.refuses_start());
        assert!(!report.is_clean());
    }
}

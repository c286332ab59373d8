//! A problem found in input (a file, a manifest, an API object): where, which object, which
//! field, what is wrong, and how bad. Errors mean an object (or file) is skipped or its last good
//! version kept; warnings mean something was read and deliberately ignored (an object kind xlb
//! does not handle, an address family it does not serve). Neither stops the agent.

use std::fmt;

use serde::Serialize;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Input ignored on purpose; what was valid is programmed.
    Warning,
    /// Input that is wrong: its object is skipped or keeps its last good version.
    #[default]
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

/// A validated value with the warnings about what it ignores, or every problem (errors and
/// warnings) if it cannot be used.
pub type Checked<T> = Result<(T, Vec<Problem>), Vec<Problem>>;

/// One input problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `file:line` (file source) or the API source; empty if unknown.
    pub origin: String,
    /// `Service default/web`, `EndpointSlice default/web-abc12`, …; empty for whole-file issues.
    pub object: String,
    /// JSON-path-like field (`spec.ports[1].port`); empty for whole-object issues.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl Problem {
    /// An error about a whole file or document at `origin`.
    pub fn file(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            object: String::new(),
            field: String::new(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// An error with a field of an object.
    pub fn field(object: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            origin: String::new(),
            object: object.to_owned(),
            field: field.into(),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// Sets the origin if not set yet.
    #[must_use]
    pub fn at(mut self, origin: &str) -> Self {
        if self.origin.is_empty() {
            self.origin = origin.to_owned();
        }
        self
    }

    /// The same problem as a warning.
    #[must_use]
    pub fn warning(mut self) -> Self {
        self.severity = Severity::Warning;
        self
    }

    /// True for errors (not warnings).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The file and line of a `file:line` origin (`line` is `None` for other origins).
    pub fn file_line(&self) -> (&str, Option<usize>) {
        match self.origin.rsplit_once(':') {
            Some((file, line)) if !file.is_empty() => match line.parse() {
                Ok(n) => (file, Some(n)),
                Err(_) => (&self.origin, None),
            },
            _ => (&self.origin, None),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for part in [&self.origin, &self.object, &self.field] {
            if !part.is_empty() {
                write!(f, "{sep}{part}")?;
                sep = ": ";
            }
        }
        write!(f, "{sep}{}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_splits_into_file_and_line() {
        let p = Problem::file("/etc/xlb/a.yaml:12", "x");
        assert_eq!(p.file_line(), ("/etc/xlb/a.yaml", Some(12)));
        let p = Problem::file("/etc/xlb/a.yaml", "x");
        assert_eq!(p.file_line(), ("/etc/xlb/a.yaml", None));
        let p = Problem::file("kubernetes", "x");
        assert_eq!(p.file_line(), ("kubernetes", None));
    }
}

//! A problem found in input (a file, a manifest, an API object): where, which object, which
//! field, and what is wrong. Problems are reported and the object is skipped (or its last good
//! version kept); they never stop the agent.

use std::fmt;

use serde::Serialize;

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
}

impl Problem {
    /// A problem with a field of an object.
    pub fn field(object: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            origin: String::new(),
            object: object.to_owned(),
            field: field.into(),
            message: message.into(),
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

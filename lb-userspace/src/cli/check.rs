//! `xlb check PATH`: validates service files without touching the kernel. Every problem goes to
//! stderr with file, line, object and field, marked error or warning; the summary of what would
//! be programmed goes to stdout. Exit code: 0 clean, 1 errors (entries that would be skipped or
//! keep their last good version), 3 warnings only (input read and deliberately ignored).

use std::path::Path;

use serde::Serialize;

use super::Output;
use crate::{
    problem::{Problem, Severity},
    source::files::FileSource,
    translate::{NodeContext, Translator},
};

/// Exit code when only warnings were found.
pub const EXIT_WARNINGS: u8 = 3;

/// One problem, structured for `-o json`.
#[derive(Serialize)]
struct Item {
    file: String,
    line: Option<usize>,
    object: String,
    field: String,
    message: String,
    severity: Severity,
}

impl From<&Problem> for Item {
    fn from(p: &Problem) -> Self {
        let (file, line) = p.file_line();
        Self {
            file: file.to_owned(),
            line,
            object: p.object.clone(),
            field: p.field.clone(),
            message: p.message.clone(),
            severity: p.severity,
        }
    }
}

#[derive(Serialize)]
struct Report {
    errors: usize,
    warnings: usize,
    problems: Vec<Item>,
    services: usize,
    frontends: usize,
    endpoints: usize,
}

/// What `xlb check` prints and its exit code.
pub struct Checked {
    /// For stdout: the summary (or the whole JSON report).
    pub stdout: String,
    /// For stderr: one line per problem (table output only).
    pub stderr: String,
    /// 0, 1 or `EXIT_WARNINGS`.
    pub exit: u8,
}

/// Runs the check.
pub fn run(
    path: &Path,
    node: &NodeContext,
    limits: crate::bpf::Limits,
    output: Output,
) -> anyhow::Result<Checked> {
    let delta = FileSource::new(path).load();
    let mut t = Translator::new(node.clone());
    delta.apply_to(&mut t);
    t.flush();
    let mut problems: Vec<Problem> = delta.problems.iter().cloned().chain(t.problems()).collect();
    let state = t.desired();
    let services = state.services.len();
    if services == 0 {
        problems.push(
            Problem::file(
                path.display().to_string(),
                "nothing to program: no service with a frontend found",
            )
            .warning(),
        );
    }
    let frontends: usize = state.services.values().map(|s| s.frontends.len()).sum();
    let endpoints: usize = state.services.values().map(|s| s.endpoints.len()).sum();
    let max_services = limits.services.saturating_sub(1) as usize;
    for (n, what, cap, flag) in [
        (services, "services", max_services, "--max-services"),
        (frontends, "frontends", limits.frontends, "--max-frontends"),
        (endpoints, "backends", limits.backends, "--max-backends"),
    ] {
        if n > cap {
            problems.push(Problem::file(
                path.display().to_string(),
                format!(
                    "{n} {what} exceed the {cap} the maps hold: the agent would leave services \
                     unprogrammed (raise {flag})"
                ),
            ));
        }
    }
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let report = Report {
        errors,
        warnings: problems.len() - errors,
        problems: problems.iter().map(Item::from).collect(),
        services,
        frontends,
        endpoints,
    };
    let exit = match (report.errors, report.warnings) {
        (0, 0) => 0,
        (0, _) => EXIT_WARNINGS,
        _ => 1,
    };
    let (stdout, stderr) = match output {
        Output::Json => (serde_json::to_string_pretty(&report)? + "\n", String::new()),
        Output::Yaml => (serde_yaml_ng::to_string(&report)?, String::new()),
        Output::Table | Output::Wide => {
            let stderr: String = problems
                .iter()
                .map(|p| format!("{}: {p}\n", p.severity))
                .collect();
            let stdout = format!(
                "{}: {} error(s), {} warning(s); would program {} service(s), {} frontend(s), \
                 {} endpoint(s)\n",
                path.display(),
                report.errors,
                report.warnings,
                report.services,
                report.frontends,
                report.endpoints
            );
            (stdout, stderr)
        }
    };
    Ok(Checked {
        stdout,
        stderr,
        exit,
    })
}

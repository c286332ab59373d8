//! `xlb check PATH`: validates service files without touching the kernel. Prints every
//! problem with file and line, then what would be programmed.

use std::path::Path;

use serde::Serialize;

use super::Output;
use crate::{k8s::NodeContext, source::files::FileSource};

#[derive(Serialize)]
struct Report {
    problems: Vec<String>,
    services: usize,
    frontends: usize,
    endpoints: usize,
}

/// Runs the check. Returns the text to print and whether the files are clean.
pub fn run(path: &Path, node: &NodeContext, output: Output) -> anyhow::Result<(String, bool)> {
    let snap = FileSource::new(path).load();
    let t = snap.translate(node);
    let problems: Vec<String> = snap
        .problems
        .iter()
        .chain(t.problems.iter())
        .map(ToString::to_string)
        .collect();
    let report = Report {
        services: t.state.services.len(),
        frontends: t.state.services.values().map(|s| s.frontends.len()).sum(),
        endpoints: t.state.services.values().map(|s| s.endpoints.len()).sum(),
        problems,
    };
    let ok = report.problems.is_empty();
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        Output::Table => {
            let mut s = String::new();
            for p in &report.problems {
                s.push_str(&format!("error: {p}\n"));
            }
            s.push_str(&format!(
                "{}: {} problem(s); would program {} service(s), {} frontend(s), {} endpoint(s)\n",
                path.display(),
                report.problems.len(),
                report.services,
                report.frontends,
                report.endpoints
            ));
            s
        }
    };
    Ok((text, ok))
}

//! `xlb check PATH`: validates service files without touching the kernel. Prints every
//! problem with file and line, then what would be programmed.

use std::path::Path;

use serde::Serialize;

use super::Output;
use crate::{
    k8s::{NodeContext, Translator},
    source::files::FileSource,
};

#[derive(Serialize)]
struct Report {
    problems: Vec<String>,
    services: usize,
    frontends: usize,
    endpoints: usize,
}

/// Runs the check. Returns the text to print and whether the files are clean.
pub fn run(path: &Path, node: &NodeContext, output: Output) -> anyhow::Result<(String, bool)> {
    let delta = FileSource::new(path).load();
    let mut t = Translator::new(node.clone());
    delta.apply_to(&mut t);
    t.flush();
    let problems: Vec<String> = delta
        .problems
        .iter()
        .cloned()
        .chain(t.problems())
        .map(|p| p.to_string())
        .collect();
    let state = t.desired();
    let report = Report {
        services: state.services.len(),
        frontends: state.services.values().map(|s| s.frontends.len()).sum(),
        endpoints: state.services.values().map(|s| s.endpoints.len()).sum(),
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

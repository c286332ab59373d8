//! xlb user space: the agent (sources → desired state → map sync), the loader and the CLI.

pub mod addr;
pub mod agent;
pub mod bpf;
pub mod cli;
pub mod http;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod par;
pub mod probe;
pub mod problem;
pub mod sockdiag;
pub mod source;
pub mod status;
pub mod sync;
pub mod translate;

#[cfg(test)]
mod layering {
    //! The layering rules, checked on the sources: sources → desired state → sync → maps →
    //! datapath, with the CLI and metrics reading maps beside them. A slip fails here.

    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("source dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// (file relative to `root`, line) of every line of `files` that uses one of `paths`.
    fn uses(root: &Path, files: &[PathBuf], paths: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(f).expect("read source");
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if paths.iter().any(|p| code.contains(p)) {
                    let rel = f.strip_prefix(root).unwrap_or(f);
                    found.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
                }
            }
        }
        found
    }

    #[test]
    fn only_the_cli_uses_the_cli_and_the_cli_never_uses_sync() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        rust_files(&root, &mut all);
        let (cli, rest): (Vec<PathBuf>, Vec<PathBuf>) = all
            .into_iter()
            .partition(|f| f.starts_with(root.join("cli")));
        let rest: Vec<PathBuf> = rest
            .into_iter()
            .filter(|f| f != &root.join("main.rs"))
            .collect();
        assert!(cli.len() >= 5 && rest.len() >= 20, "source tree not found");
        // (Needles spelt in pieces, so this file does not match itself.)
        // (`crate::…` and the nested `{ … cli::… }` form; not `std::sync::`.)
        let slips = uses(
            &root,
            &rest,
            &[concat!("crate::", "cli"), concat!(" cli", "::")],
        );
        assert!(
            slips.is_empty(),
            "the CLI used outside it:\n{}",
            slips.join("\n")
        );
        let slips = uses(
            &root,
            &cli,
            &[concat!("crate::", "sync"), concat!(" sync", "::")],
        );
        assert!(
            slips.is_empty(),
            "the CLI uses the sync layer:\n{}",
            slips.join("\n")
        );
    }

    #[test]
    fn the_datapath_modules_do_not_import_each_other_in_a_cycle() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf/src");
        // `lb` runs the pipeline and calls `icmp`; `icmp` shares only `verdict` with it.
        let slips = uses(
            &root,
            &[root.join("icmp.rs")],
            &[concat!("crate::", "lb"), " lb::"],
        );
        assert!(slips.is_empty(), "icmp imports lb:\n{}", slips.join("\n"));
        // The packet access both objects share names no map: the benchmarks' object has none.
        let shared = [
            root.join("ctx.rs"),
            root.join("parse.rs"),
            root.join("lib.rs"),
        ];
        let slips = uses(&root, &shared, &[concat!("crate::", "maps"), "btf_map"]);
        assert!(
            slips.is_empty(),
            "shared modules use maps:\n{}",
            slips.join("\n")
        );
    }

    #[test]
    fn the_agents_object_holds_no_benchmark_program() {
        let obj = aya_obj::Object::parse(crate::bpf::OBJECT).expect("datapath object");
        let names: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        assert!(names.contains(&lb_common::prog_names::XDP), "{names:?}");
        let bench: Vec<&&str> = names
            .iter()
            .filter(|n| ["floor", "gen", "sink"].iter().any(|b| n.contains(b)))
            .collect();
        assert!(
            bench.is_empty(),
            "benchmark programs in the product: {bench:?}"
        );
        assert!(
            !crate::bpf::OBJECT
                .windows(b"GEN_TEMPLATE".len())
                .any(|w| w == b"GEN_TEMPLATE"),
            "the generator's template is in the product"
        );
    }
}

//! Project tasks: `cargo xtask setup | test | demo | bench <what> | fuzz | install | image`.
//!
//! `test` is what CI runs: set-up, formatting, lints (user space and the kernel crate), then
//! every test (host unit tests, BPF_PROG_TEST_RUN fixtures, network-namespace integration
//! tests with the real agent). xtask depends on nothing of the project, so it builds before
//! bpf-linker exists.

use xtask::{image, setup};

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent).
    Setup {
        /// Only what building needs (rust-src, bpf-linker): no bpffs, no apt packages.
        #[arg(long)]
        toolchain_only: bool,
    },
    /// Formatting, lints, and every test (what CI runs).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Throw-away demo: a node, a client pod, three backends, TCP and UDP through a ClusterIP.
    Demo,
    /// Benchmarks that print figures and ratios.
    Bench {
        /// `datapath`, `sync` or `e2e`.
        what: String,
        /// Extra arguments for the benchmark.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Release build of `xlb` installed with its man page and bash/zsh/fish completions.
    Install {
        /// Installation prefix.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Install this already built binary instead of building one.
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
    },
    /// The agent's OCI image (podman, from a debootstrapped Debian), saved as an OCI archive,
    /// then run: `xlb --version` and `xlb check` on the examples it ships.
    Image {
        /// Image name and tag.
        #[arg(long, default_value = concat!("localhost/xlb:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// Put this already built binary in instead of a release build.
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
    },
    /// Differential fuzzing of the datapath against the reference model.
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// First seed (default: one from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Actions per case.
        #[arg(long, default_value_t = 2000)]
        steps: usize,
    },
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    println!("xtask: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs cargo of the nightly toolchain (the kernel crate's lints need `-Z build-std`).
fn nightly_cargo(args: &[&str]) -> anyhow::Result<()> {
    println!(
        "xtask: rustup run {} cargo {}",
        setup::NIGHTLY,
        args.join(" ")
    );
    let status = Command::new("rustup")
        .args(["run", setup::NIGHTLY, "cargo"])
        .args(args)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!("{what} needs root (BPF, network namespaces): run it as root");
    }
    Ok(())
}

/// Release build of the agent and the demo/benchmark binaries.
fn build_release() -> anyhow::Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "xlb-tests",
        "-p",
        "xlb-benches",
        "--bins",
    ])
}

fn run_bin(name: &str, args: &[String]) -> anyhow::Result<()> {
    let bin = std::path::Path::new("target/release").join(name);
    let status = Command::new(&bin)
        .args(args)
        .env("XLB_BIN", "target/release/xlb")
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}

/// Copies `bin` to `PREFIX/bin/xlb` and writes what it generates about itself: the man pages and
/// the completion scripts, where man and the shells look for them under `prefix`.
fn install(bin: &std::path::Path, prefix: &std::path::Path) -> anyhow::Result<()> {
    let put = |rel: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = prefix.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        println!("xtask: installed {}", path.display());
        Ok(())
    };
    let generate = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = Command::new(bin)
            .args(args)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "{} {}: {}",
                bin.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    };
    put(
        "bin/xlb",
        &std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?,
        0o755,
    )?;
    let man = prefix.join("share/man/man1");
    generate(&["man", "--dir", &man.to_string_lossy()])?;
    println!("xtask: installed the man pages under {}", man.display());
    for (shell, rel) in [
        ("bash", "share/bash-completion/completions/xlb"),
        ("zsh", "share/zsh/site-functions/_xlb"),
        ("fish", "share/fish/vendor_completions.d/xlb.fish"),
    ] {
        put(rel, &generate(&["completions", shell])?, 0o644)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Tasks run from the workspace root whatever the caller's directory.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    std::env::set_current_dir(root)?;
    match cli.cmd {
        Cmd::Setup { toolchain_only } if toolchain_only => setup::toolchain(),
        Cmd::Setup { .. } => setup::setup(&[]),
        Cmd::Test { args } => {
            require_root("the test suite")?;
            // tests/image.rs builds and runs the image.
            setup::setup(image::PACKAGES)?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            nightly_cargo(&[
                "clippy",
                "-p",
                "lb-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&["build", "-p", "lb-userspace", "--bins"])?;
            let mut test_args = vec!["test"];
            let extra: Vec<&str> = args.iter().map(String::as_str).collect();
            if !extra.is_empty() {
                test_args.extend(extra);
            }
            cargo(&test_args)
        }
        Cmd::Demo => {
            require_root("the demo")?;
            setup::setup(&[])?;
            build_release()?;
            run_bin("xlb-demo", &[])
        }
        Cmd::Bench { what, args } => {
            require_root("the benchmarks")?;
            let extra: &[(&str, &str)] = if what == "e2e" || what == "sync" {
                setup::BENCH_PACKAGES
            } else {
                &[]
            };
            setup::setup(extra)?;
            build_release()?;
            let bin = match what.as_str() {
                "datapath" => "xlb-bench-datapath",
                "sync" => "xlb-bench-sync",
                "e2e" => "xlb-bench-e2e",
                other => bail!("unknown benchmark {other:?}: datapath, sync or e2e"),
            };
            run_bin(bin, &args)
        }
        Cmd::Install { prefix, bin } => {
            let bin = if let Some(b) = bin {
                b
            } else {
                setup::toolchain()?;
                cargo(&["build", "--release", "-p", "lb-userspace", "--bin", "xlb"])?;
                "target/release/xlb".into()
            };
            install(&bin, &prefix)
        }
        Cmd::Image { tag, bin } => {
            let bin = if let Some(b) = bin {
                b
            } else {
                setup::toolchain()?;
                cargo(&["build", "--release", "-p", "lb-userspace", "--bin", "xlb"])?;
                "target/release/xlb".into()
            };
            let version = tag.rsplit(':').next().unwrap_or("dev").to_owned();
            image::build_and_check(&image::Options {
                bin,
                tag,
                work: "target/image".into(),
                archive: format!("target/image/xlb-{version}.oci.tar").into(),
            })
        }
        Cmd::Fuzz {
            seconds,
            seed,
            steps,
        } => {
            require_root("the fuzzer")?;
            setup::setup(&[])?;
            build_release()?;
            let mut args = vec![
                "--seconds".to_owned(),
                seconds.to_string(),
                "--steps".to_owned(),
                steps.to_string(),
            ];
            if let Some(s) = seed {
                args.extend(["--seed".to_owned(), s.to_string()]);
            }
            run_bin("xlb-fuzz", &args)
        }
    }
}

//! Idempotent set-up of everything the build and the tests need on a fresh Debian machine:
//! rust-src for the nightly toolchain, bpf-linker built against that nightly's own libLLVM,
//! a mounted bpffs, and the apt packages the tests use. A second run checks and does nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The toolchain the eBPF crate is built with (bpf-linker must match its LLVM).
pub const NIGHTLY: &str = "nightly";
/// bpf-linker release known to work with the pinned aya versions.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Packages the tests need (binary → Debian package).
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    // `systemd-analyze verify` checks the shipped unit (deploy/systemd).
    ("systemd-analyze", "systemd"),
    // Renders the generated man pages (tests/operability.rs).
    ("man", "man-db"),
    // The end-to-end benchmark's beds run an iperf3 server (benches/tests).
    ("iperf3", "iperf3"),
    // A real DNS server behind a UDP ClusterIP (tests/clusterip.rs).
    ("dnsmasq", "dnsmasq-base"),
];

/// Extra packages of the end-to-end benchmarks.
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("wrk", "wrk"),
    ("iptables-legacy-restore", "iptables"),
    ("nft", "nftables"),
    // PNG charts of `bench e2e`.
    (
        "/usr/lib/python3/dist-packages/matplotlib",
        "python3-matplotlib",
    ),
];

/// Runs `cmd`; an error unless it succeeds.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its trimmed stdout; an error unless it succeeds.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let s = output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .context("the nightly toolchain is required (rustup toolchain list)")?;
    Ok(PathBuf::from(s))
}

fn ensure_rust_src(sysroot: &Path) -> anyhow::Result<()> {
    let core = sysroot.join("lib/rustlib/src/rust/library/core");
    if core.exists() {
        return Ok(());
    }
    println!("setup: installing rust-src for {NIGHTLY}");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The libLLVM shared object shipped with the nightly toolchain (name derived, not assumed).
fn nightly_libllvm(sysroot: &Path) -> anyhow::Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .collect();
    found.sort();
    // Prefer the versioned soname (libLLVM.so.<ver>-rust-…) that binaries link against.
    found
        .iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .or_else(|| found.first())
        .cloned()
        .with_context(|| format!("no libLLVM in {}", lib.display()))
}

fn llvm_major(libllvm: &Path) -> anyhow::Result<String> {
    let name = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))
        .unwrap_or_default();
    let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version of {name}");
    }
    Ok(major)
}

fn bpf_linker_works() -> bool {
    let bin = cargo_bin_dir().join("bpf-linker");
    Command::new(&bin).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    })
}

fn ensure_bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let libllvm = nightly_libllvm(sysroot)?;
    let major = llvm_major(&libllvm)?;
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        libllvm.display()
    );
    // A stable prefix holding the nightly's libLLVM under the names llvm-sys looks for; the
    // built binary keeps an rpath to it.
    let prefix = home().join(".cache/xlb/llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    let file = libllvm.file_name().context("libLLVM file name")?.to_owned();
    for link in [lib.join("libLLVM.so"), lib.join(&file)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--force",
        ])
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTUP_TOOLCHAIN", "stable"))?;
    if !bpf_linker_works() {
        bail!("bpf-linker was built but does not run");
    }
    Ok(())
}

/// Mounts bpffs on /sys/fs/bpf if nothing is mounted there.
fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    println!("setup: mounting bpffs on /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf")?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Whether `bin` is on the PATH (or, given as an absolute path, exists: for packages that
/// install no binary, such as Python modules).
fn has_binary(bin: &str) -> bool {
    if bin.starts_with('/') {
        return Path::new(bin).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .any(|d| d.join(bin).exists())
}

/// Installs the Debian packages providing `wanted` binaries that are missing.
pub fn ensure_packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| !has_binary(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: apt-get install {}", missing.join(" "));
    let install = |update: bool| -> anyhow::Result<()> {
        if update {
            run(Command::new("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // Package lists on a fresh machine may be stale or absent: update once if needed.
    install(false).or_else(|_| install(true))
}

/// What building the eBPF programs needs (rust-src, bpf-linker): enough for an image build.
pub fn toolchain() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

/// Everything the build and tests need.
pub fn setup(extra_packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let start = Instant::now();
    toolchain()?;
    ensure_bpffs()?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_packages(extra_packages)?;
    println!("setup: ok ({:.1}s)", start.elapsed().as_secs_f64());
    Ok(())
}

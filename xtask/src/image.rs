//! `cargo xtask image`: the agent's OCI image, built from nothing but Debian's apt mirror. A
//! minimal Debian (debootstrap, with bpftool) is the base, the `xlb` binary and the bundled
//! examples go on top, podman imports it and saves an OCI archive; the image is then run.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::setup;

/// What building and running images needs.
pub const PACKAGES: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("runc", "runc"),
    ("debootstrap", "debootstrap"),
];

/// Where the Debian base comes from (override with `XLB_DEBIAN_MIRROR`).
const MIRROR: &str = "http://deb.debian.org/debian";

/// What to build.
pub struct Options {
    /// The `xlb` binary to put in (debug info is stripped).
    pub bin: PathBuf,
    /// Image name and tag, e.g. `localhost/xlb:0.1.0`.
    pub tag: String,
    /// Scratch directory; the Debian base is kept there between builds.
    pub work: PathBuf,
    /// The OCI archive written.
    pub archive: PathBuf,
}

/// The Debian release of this host (`VERSION_CODENAME`), so the base matches its packages.
fn suite() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: not Debian?")
}

/// A minimal Debian with bpftool and CA certificates under `work/base`, made once.
fn base(work: &Path) -> anyhow::Result<PathBuf> {
    let dir = work.join("base");
    let done = work.join("base.done");
    if done.exists() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let mirror = std::env::var("XLB_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.to_owned());
    let suite = suite()?;
    println!("image: debootstrap {suite} from {mirror}");
    setup::run(Command::new("debootstrap").args([
        "--variant=minbase",
        "--include=bpftool,ca-certificates",
        &suite,
        &dir.to_string_lossy(),
        &mirror,
    ]))?;
    // What an image does not need: package lists, caches, documentation.
    for rel in [
        "var/lib/apt/lists",
        "var/cache/apt",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
    ] {
        let p = dir.join(rel);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::create_dir_all(&p);
    }
    std::fs::write(&done, b"").context("marking the base done")?;
    Ok(dir)
}

/// Builds the image and writes its OCI archive.
pub fn build(o: &Options) -> anyhow::Result<()> {
    setup::ensure_packages(PACKAGES)?;
    let base = base(&o.work)?;
    let rootfs = o.work.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    setup::run(Command::new("cp").args(["-a"]).arg(&base).arg(&rootfs))?;
    let bin = rootfs.join("usr/local/bin/xlb");
    std::fs::create_dir_all(bin.parent().context("bin dir")?)?;
    setup::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&o.bin)
            .arg(&bin),
    )
    .with_context(|| format!("copying {}", o.bin.display()))?;
    let examples = rootfs.join("usr/share/xlb/examples");
    std::fs::create_dir_all(&examples)?;
    for dir in ["deploy/examples", "deploy/standalone"] {
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let name = p.file_name().context("name")?;
                std::fs::copy(&p, examples.join(name))?;
            }
        }
    }
    let _ = Command::new("podman").args(["rmi", "-f", &o.tag]).output();
    let tar = o.work.join("rootfs.tar");
    setup::run(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )?;
    let version = env!("CARGO_PKG_VERSION");
    setup::run(Command::new("podman").args([
        "import",
        "--change",
        r#"ENTRYPOINT ["/usr/local/bin/xlb"]"#,
        "--change",
        r#"CMD ["agent", "--in-cluster"]"#,
        "--change",
        &format!("LABEL org.opencontainers.image.version={version}"),
        "--change",
        "LABEL org.opencontainers.image.title=xlb",
        &tar.to_string_lossy(),
        &o.tag,
    ]))?;
    let _ = std::fs::remove_file(&o.archive);
    setup::run(Command::new("podman").args([
        "save",
        "--format",
        "oci-archive",
        "-o",
        &o.archive.to_string_lossy(),
        &o.tag,
    ]))?;
    let _ = std::fs::remove_file(&tar);
    let _ = std::fs::remove_dir_all(&rootfs);
    println!("image: {} -> {}", o.tag, o.archive.display());
    Ok(())
}

/// Runs the image with `args` (no network; runc with cgroupfs and file limits within the
/// caller's, so it also runs where podman's defaults cannot, e.g. without CAP_SYS_RESOURCE or
/// on hybrid cgroups): (exit code, stdout, stderr).
pub fn run(tag: &str, args: &[&str]) -> anyhow::Result<(Option<i32>, String, String)> {
    run_as(tag, None, args)
}

/// `run` with another entrypoint than the image's (`xlb`), e.g. `/usr/sbin/bpftool`.
pub fn run_as(
    tag: &str,
    entrypoint: Option<&str>,
    args: &[&str],
) -> anyhow::Result<(Option<i32>, String, String)> {
    let mut cmd = Command::new("podman");
    cmd.args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "run",
        "--rm",
    ])
    .args(["--network", "none", "--ulimit", "nofile=1024:1024"])
    .args(["--ulimit", "nproc=1024:1024"]);
    if let Some(e) = entrypoint {
        cmd.args(["--entrypoint", e]);
    }
    let out = cmd.arg(tag).args(args).output().context("running podman")?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Builds the image and checks it the way a user first would: `xlb --version`, and
/// `xlb check` on the examples it ships.
pub fn build_and_check(o: &Options) -> anyhow::Result<()> {
    build(o)?;
    let (code, out, err) = run(&o.tag, &["--version"])?;
    if code != Some(0) || !out.starts_with("xlb ") {
        bail!("the image's `xlb --version` failed ({code:?}): {out}{err}");
    }
    print!("image: xlb --version: {out}");
    let (code, out, err) = run(&o.tag, &["check", "/usr/share/xlb/examples/"])?;
    if code != Some(0) {
        bail!("the image's `xlb check` on its examples failed ({code:?}): {out}{err}");
    }
    print!("image: xlb check /usr/share/xlb/examples/: {out}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let pkg = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    // aya-build watches the kernel crate only; the types and hashes it shares with user space
    // live in lb-common, and an object built against an older lb-common would disagree with
    // this binary about the maps (a filter bit, a layout) without any error.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-common")
    );
    // The commit `xlb --version` and `xlb status` name (none outside a git checkout).
    let git = concat!(env!("CARGO_MANIFEST_DIR"), "/../.git");
    println!("cargo:rerun-if-changed={git}/HEAD");
    println!("cargo:rerun-if-changed={git}/refs/heads");
    if let Ok(out) = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        && out.status.success()
    {
        let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        println!("cargo:rustc-env=XLB_COMMIT={commit}");
    }
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly)?;
    // The benchmarks' object (floors, generator, sink) is built with the datapath but never
    // embedded here: its path goes to crates that link `xlb-ebpf` (the benches), as
    // `DEP_XLB_EBPF_BENCH_OBJECT`.
    let out = std::env::var("OUT_DIR")?;
    println!("cargo::metadata=bench_object={out}/lb-ebpf-bench");
    Ok(())
}

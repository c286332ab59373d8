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
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly)
}

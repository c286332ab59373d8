fn main() -> anyhow::Result<()> {
    let pkg = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Nightly)
}

//! Hands the benchmarks' kernel object, built by lb-userspace's build script next to the
//! datapath, to `object.rs` (`XLB_BENCH_OBJECT`).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_XLB_EBPF_BENCH_OBJECT");
    match std::env::var("DEP_XLB_EBPF_BENCH_OBJECT") {
        Ok(path) => println!("cargo:rustc-env=XLB_BENCH_OBJECT={path}"),
        Err(e) => panic!("lb-userspace did not say where the benchmarks' object is: {e}"),
    }
}

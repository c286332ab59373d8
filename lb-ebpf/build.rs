//! Linker flags of the kernel programs (bpf-linker).

fn main() {
    // Memory intrinsics expanded in place, never calls to aya-ebpf's byte-loop `memcpy` and
    // `memset`: the verifier walks such a loop byte by byte on every path that reaches it.
    println!("cargo:rustc-link-arg-bins=--disable-memory-builtins");
}

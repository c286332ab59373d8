# The xlb agent image (deploy/kubernetes/daemonset.yaml).
#   docker build -t xlb:dev .
# The build uses the same recipe as CI: `cargo xtask setup --toolchain-only` adds rust-src to the
# nightly and builds bpf-linker against the nightly's own libLLVM (TOOLCHAIN.md).

FROM rust:1.95-bookworm AS build
# The nightly the eBPF crate is built with, under the name the build expects ("nightly").
ARG NIGHTLY=nightly-2026-05-19
RUN rustup toolchain install "$NIGHTLY" --profile minimal \
 && rustup toolchain link nightly "$(rustup run "$NIGHTLY" rustc --print sysroot)"
WORKDIR /src
COPY . .
RUN cargo xtask setup --toolchain-only \
 && cargo build --release --locked -p lb-userspace --bin xlb \
 && install -D target/release/xlb /out/xlb

FROM debian:bookworm-slim
# bpftool: reading the pinned maps from `kubectl exec` (docs/maps.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends bpftool ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/xlb /usr/local/bin/xlb
ENTRYPOINT ["/usr/local/bin/xlb"]
CMD ["agent", "--in-cluster"]

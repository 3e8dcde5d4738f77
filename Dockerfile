# The skiff image, used by manifests/30-daemonset.yaml:
#
#   docker build -t ghcr.io/skiff-dataplane/skiff:0.1.0 .      (at the repository root)
#
# UNTESTED: this file has never been built. The machine it was written on has no container
# engine (no Docker/Podman daemon). What it runs is the project's own build,
# `cargo xtask build --release`, which CI runs outside containers; the first stage's trick
# (placeholder sources for the crates xtask does not need) was checked with cargo there.
#
# Stages:
# 1. toolchain: `cargo xtask setup` installs what the eBPF build needs (the nightly pinned in
#    ebpf-toolchain with rust-src, Debian's llvm-N-dev, bpf-linker built against it: a few
#    minutes). It only sees the files xtask needs, so the layer is reused until those change.
# 2. builder: `cargo xtask build --release` builds the agent and, through its build.rs, the
#    eBPF object embedded in it.
# 3. the runtime image: Debian slim (the same glibc as the builder) with the `skiff` binary.
#    It runs as root: the DaemonSet grants the capabilities it needs to root only (see
#    docs/kubernetes.md). No shell tools are needed by the agent; the slim base keeps a shell
#    for `kubectl exec` and for `skiff cleanup`.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS toolchain
WORKDIR /src
# `cargo xtask` needs the whole workspace to load: its manifest and lock file, the alias in
# .cargo/config.toml, the xtask crate and its dependency skiff-testbed (tests/). The other
# members are only read as manifests, so empty placeholder sources stand in for theirs here;
# they are removed before the real sources are copied. Building as root lets setup apt-get
# install llvm-N-dev (bookworm-security, already in the image's apt sources).
COPY Cargo.toml Cargo.lock ebpf-toolchain ./
COPY .cargo .cargo
COPY xtask xtask
COPY tests tests
COPY dataplane-common/Cargo.toml dataplane-common/
COPY dataplane-agent/Cargo.toml dataplane-agent/
COPY dataplane-ebpf/Cargo.toml dataplane-ebpf/
RUN set -eux; \
    for crate in dataplane-common dataplane-agent dataplane-ebpf; do \
        mkdir -p "$crate/src"; \
        touch "$crate/src/lib.rs" "$crate/src/main.rs"; \
    done; \
    cargo xtask setup; \
    rm -rf dataplane-common dataplane-agent dataplane-ebpf; \
    rm -rf /var/lib/apt/lists/*

FROM toolchain AS builder
COPY dataplane-common dataplane-common
COPY dataplane-agent dataplane-agent
COPY dataplane-ebpf dataplane-ebpf
RUN set -eux; \
    cargo xtask build --release; \
    install -D -m 0755 target/release/skiff /out/skiff; \
    /out/skiff --version

FROM debian:${DEBIAN_RELEASE}-slim
# CA certificates for a --kubeconfig whose API server has a publicly signed certificate; the
# in-cluster configuration uses the service account's CA instead.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/skiff /usr/local/bin/skiff
LABEL org.opencontainers.image.title="skiff" \
      org.opencontainers.image.description="eBPF service proxy and NetworkPolicy dataplane for Kubernetes (kube-proxy replacement)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/skiff"]
CMD ["--help"]

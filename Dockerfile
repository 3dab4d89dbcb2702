# syntax=docker/dockerfile:1.7
# One image for every subcommand (controller, sidecar, inject, render, crdgen, emulate, demo):
# the `streamkeeper` binary, and beside it the lean `streamkeeper-sidecar` that injected pods run
# (the sidecar alone: fewer pages of code mapped per pod), on distroless, as a numeric non-root
# user, ready for a read-only root filesystem. Build: docker build -t ghcr.io/streamkeeper/streamkeeper:0.1.0 --build-arg VERSION=0.1.0 .

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.77

# cargo-chef splits the build in two layers: the dependencies (rebuilt only when a Cargo.toml or
# Cargo.lock changes) and the workspace's own code.
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION
# make: tikv-jemalloc-sys builds jemalloc, the binaries' allocator, from its C sources.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install --locked "cargo-chef@${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked -p streamkeeper --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked -p streamkeeper \
    && install -D -m 0755 target/release/streamkeeper /out/streamkeeper \
    && install -D -m 0755 target/release/streamkeeper-sidecar /out/streamkeeper-sidecar \
    && /out/streamkeeper --version && /out/streamkeeper-sidecar --version

# distroless/cc (Debian 12, the glibc the build stage linked against) has glibc, libgcc and the CA
# bundle the sidecar trusts by default, and nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="streamkeeper" \
      org.opencontainers.image.description="Keeps contact-center real-time streams (Genesys Cloud CX, NICE CXone) alive and correct: the sidecar, the operator and its tools in one binary" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/streamkeeper"
COPY --from=build /out/streamkeeper /out/streamkeeper-sidecar /usr/local/bin/
# The distroless `nonroot` user, by number so that runAsNonRoot can verify it.
USER 65532:65532
# 7700: the app endpoint (127.0.0.1 in the pod); 9464: the sidecar's metrics and probes;
# 9465: the controller's.
EXPOSE 7700 9464 9465
ENTRYPOINT ["/usr/local/bin/streamkeeper"]
CMD ["sidecar", "--config", "/etc/streamkeeper/sidecar.yaml"]

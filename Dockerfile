# syntax=docker/dockerfile:1.7
# One image for every subcommand (sidecar, emulate, demo, and later controller): a static-ish
# Rust binary on distroless, running as a non-root user with a read-only root filesystem in mind.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p streamkeeper \
    && install -D -m 0755 target/release/streamkeeper /out/streamkeeper

# distroless/cc has glibc, libgcc and the CA bundle the sidecar trusts by default, and nothing
# else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/streamkeeper /usr/local/bin/streamkeeper
USER 65532:65532
# 7700: the app endpoint (bind it to 127.0.0.1 in the config); 9464: metrics and probes.
EXPOSE 7700 9464
ENTRYPOINT ["/usr/local/bin/streamkeeper"]
CMD ["sidecar", "--config", "/etc/streamkeeper/sidecar.yaml"]

# syntax=docker/dockerfile:1
#
# twofa-authz container image.
#
#   docker build -t twofa-authz:0.1.0 .
#
# Stage 1 compiles the release binary with the toolchain from the official Rust
# image; `--locked` refuses to build if Cargo.lock is out of date. The build needs
# no system protoc (build.rs uses a vendored one); TLS is rustls/aws-lc, but
# webauthn-rs links OpenSSL (libssl-dev and pkg-config in the build stage).
# Stage 2 is distroless: glibc, libssl3, CA certificates and nothing else (no
# shell, no package manager), running as the image's unprivileged "nonroot"
# user.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The commit for twofa_build_info (.git is not in the build context):
#   docker build --build-arg TWOFA_BUILD_COMMIT=$(git rev-parse --short HEAD) .
# Unset: "unknown".
ARG TWOFA_BUILD_COMMIT=unknown
ENV TWOFA_BUILD_COMMIT=${TWOFA_BUILD_COMMIT}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
COPY . .
# The cache mounts keep the crate registry and the target directory between
# builds (BuildKit); the binary is copied out of the cached target dir in the
# same step, because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/twofa-authz /out/twofa-authz

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="twofa-authz" \
      org.opencontainers.image.description="Envoy/nginx external authorization enforcing a second factor for Keycloak sessions" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/twofa-authz /usr/local/bin/twofa-authz
# 65532 is distroless's "nonroot" user. It is given by number so that Kubernetes'
# runAsNonRoot can verify it without a runAsUser (the manifests set 65532 too).
USER 65532:65532
# At most two glibc malloc arenas: the default (eight per core) keeps memory
# freed in one thread's arena away from the others, some 3 MiB of slack with
# both caches full (BENCHMARKS.md, "Flat cost").
ENV MALLOC_ARENA_MAX=2
# 9191: Envoy ext_authz gRPC; 8090: HTTP (/user API, forward auth /authz/..., probes, /metrics).
# Both bind 127.0.0.1 by default: the configuration (server.grpc_addr,
# server.http_addr) or TWOFA_SERVER__* variables must open what other containers
# need to reach.
EXPOSE 9191 8090
ENTRYPOINT ["/usr/local/bin/twofa-authz"]
CMD ["serve", "--config", "/etc/twofa-authz/config.toml"]

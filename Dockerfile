# The sluice image: the operator, connector tasks and replays are one binary (`sluice operator|task|replay`).
# Not built in this repository's CI (no container engine there); the loopback cluster runs the same binary
# as a local process for pods of this image.
FROM rust:1.95-bookworm AS build
# What rdkafka's static librdkafka build needs (see Makefile APT_PACKAGES).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libcurl4-openssl-dev libssl-dev libsasl2-dev \
      libzstd-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin sluice

# Only what `ldd sluice` lists (libssl, libsasl2, zlib) plus CA certificates; runs as uid 65532 with a read-only root.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]

# hayate's container image: `docker build -t hayate .` or `podman build -t hayate .`
# A non-root image of the release binary and a config made for containers (metrics on all
# addresses, JSON logs: deploy/container/config.yaml) on debian:bookworm-slim. Run it with
#   docker run --read-only --cap-drop ALL --security-opt no-new-privileges \
#     -p 6969:6969/tcp -p 6969:6969/udp -p 6880:6880/tcp hayate
# io_uring under the default seccomp profiles of Docker 25+, containerd 2 and podman is refused,
# and hayate serves on epoll; deploy/seccomp/hayate.json allows it (README, "Deploying").
# CARGO_BUILD_JOBS (a build argument) bounds the compiler's parallel jobs on a shared machine.

FROM rust:1-bookworm AS build
ARG CARGO_BUILD_JOBS
WORKDIR /src
# A failure anywhere in a pipe fails the step.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change. Stub sources stand in for hayate's (the benches and the tests Cargo.toml
# names only need to exist: their files are read off Cargo.toml), and hayate's own artifacts
# are removed afterwards so that the real sources always rebuild.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && awk '/^\[\[(bench|test)\]\]/ { kind = $0; next } /^\[/ { kind = "" } \
            kind ~ /bench/ && $1 == "name" { gsub(/"/, "", $3); print "benches/" $3 ".rs" } \
            kind ~ /test/ && $1 == "path" { gsub(/"/, "", $3); print $3 }' Cargo.toml \
       | while read -r stub; do mkdir -p "$(dirname "$stub")" && echo 'fn main() {}' > "$stub"; done \
    && cargo build --release --locked \
    && rm -rf src target/release/hayate target/release/deps/hayate-* \
        target/release/deps/libhayate-* target/release/.fingerprint/hayate-*

COPY config.yaml ./
COPY src src/
# Line tables stay out of the image (the release profile keeps them for profiling).
RUN CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked \
    && ./target/release/hayate --version

FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="hayate" \
      org.opencontainers.image.description="BitTorrent tracker for Linux: HTTP and UDP, IPv4 and IPv6, io_uring and epoll" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

COPY --from=build /src/target/release/hayate /usr/local/bin/hayate
COPY deploy/container/config.yaml /etc/hayate/config.yaml

# A numeric user, so that Kubernetes' runAsNonRoot can check it without a passwd entry.
USER 65532:65532
EXPOSE 6969/tcp 6969/udp 6880/tcp
# hayate stops within a second on SIGTERM (exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hayate"]
CMD ["--config", "/etc/hayate/config.yaml"]

#!/usr/bin/env bash
# Runs every test of hayate on a Debian machine with a Rust toolchain (rustup, Rust >= 1.89):
# installs the Debian packages the tests use (libtorrent, aria2, mktorrent, promtool, redis-server,
# redis-sentinel, ...), then the supply-chain check (ci/supply_chain.sh: cargo deny on Cargo.lock,
# offline on ../shared/advisory-db; it installs cargo-deny), then the Rust suite (unit, property,
# integration, process, replication on real Redis, the attack floods), then the real-client
# transfers (libtorrent and aria2 through hayate, and between two replicated nodes), then the
# fuzz targets (fuzz/: seeds and past findings replayed, a few seconds of AFL++ each), then the
# deployment tests: ci/deploy/check.sh (Dockerfile, Helm chart, alerts, systemd unit; it installs
# its own tools) and ci/deploy/image.sh (the image and the systemd unit, run under podman or
# Docker; HAYATE_SKIP_IMAGE=1 leaves it out).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "ci/test.sh: cargo not found: install Rust with rustup (https://rustup.rs), Rust >= 1.89" >&2
  exit 1
fi

# Debian packages the tests need, installed only where missing.
missing=()
command -v taskset >/dev/null || missing+=(util-linux)
command -v ss >/dev/null || missing+=(iproute2)
command -v mktorrent >/dev/null || missing+=(mktorrent)
command -v aria2c >/dev/null || missing+=(aria2)
command -v openssl >/dev/null || missing+=(openssl)  # key pairs for tests/jwt.rs
{ [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import libtorrent' 2>/dev/null; } || missing+=(python3-libtorrent)
command -v promtool >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null || missing+=(redis-server)   # tests/replication.rs, real clients
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v redis-cli >/dev/null || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "ci/test.sh: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

ci/supply_chain.sh
cargo build --locked --all-targets
cargo test --locked --no-fail-fast
ci/real_clients/run.sh target/debug/hayate
# The fuzz targets: every seed and past finding replayed, then each fuzzed a few seconds with
# AFL++ (cargo-afl builds it with the C compiler; fuzz/run.sh installs it where missing).
(cd fuzz && cargo test --locked --quiet)
fuzz/run.sh "${FUZZ_SECS:-5}"
HAYATE=target/debug/hayate ci/deploy/check.sh
if [ "${HAYATE_SKIP_IMAGE:-0}" != 1 ]; then
  ci/deploy/image.sh
fi

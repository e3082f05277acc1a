#!/usr/bin/env bash
# The supply-chain check: `cargo deny check` with deny.toml on Cargo.lock's graph: advisories
# (RustSec: vulnerabilities, unmaintained, unsound, yanked), licenses (an allow-list), bans
# (duplicate versions) and sources (crates.io only). Any finding deny.toml does not excuse fails.
#
# The RustSec database cannot be fetched on this project's machines. Where
# ../shared/advisory-db (a snapshot; commit and date in its SNAPSHOT) exists, as it does beside
# every clone CI runs, its prepare.sh makes it the git repository cargo-deny reads, under
# target/advisory-dbs (deny.toml's db-path), and cargo-deny runs offline on it. Elsewhere
# cargo-deny fetches the live database into the same folder.
#
# Usage: ci/supply_chain.sh   (SHARED overrides ../shared)
# Installs cargo-deny (pinned below) with `cargo install` where it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${SHARED:-$ROOT/../shared}
# Pinned: prepare.sh names the folder cargo-deny 0.20 reads, and a new release may judge
# differently; move it on purpose.
DENY_VERSION=0.20.2

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
  echo "supply_chain: installing cargo-deny $DENY_VERSION" >&2
  # Without cargo-deny's fat LTO: 5.4 min instead of 9.8 with one compiler job; a check takes
  # seconds either way.
  CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install --locked --quiet "cargo-deny@$DENY_VERSION"
fi

# The RUSTSEC-2023-0071 ignore in deny.toml holds because hayate never holds an RSA private
# key: keep it that way, or judge the advisory again.
if grep -rnE 'EncodingKey|RsaPrivateKey' src/; then
  echo "supply_chain: src/ signs or holds a private key (above): deny.toml's ignore of RUSTSEC-2023-0071 assumes verification with public keys only" >&2
  exit 1
fi

offline=()
if [ -f "$SHARED/advisory-db/prepare.sh" ]; then
  bash "$SHARED/advisory-db/prepare.sh" target/advisory-dbs >/dev/null
  read -r commit date _ <"$SHARED/advisory-db/SNAPSHOT"
  age_days=$((($(date +%s) - $(date -d "$date" +%s)) / 86400))
  echo "supply_chain: RustSec advisory-db snapshot ${commit:0:12} of ${date%%T*} ($age_days days old)"
  if [ "$age_days" -gt 180 ]; then
    echo "supply_chain: WARNING: the advisory snapshot is over 180 days old; advisories since then are not checked" >&2
  fi
  offline=(--offline)
  # Offline, cargo-deny reads every platform's crates from the local cache.
  cargo fetch --locked --quiet
fi

cargo deny "${offline[@]}" --locked check --show-stats

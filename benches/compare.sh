#!/usr/bin/env bash
# Runs hayate against the reference trackers with ../shared/bench (aquatic's load testers,
# tracker on CPU 0, load tester on CPU 1) and prints each comparison's ratios from one run.
#
#   benches/compare.sh [NAME...]          default: every comparison below
#   REPEATS=5 DURATION=20 benches/compare.sh udp-uring-vs-null
#
# NAME                        B (hayate)                  A (reference)
# udp-uring-vs-null           io_uring engine             null tracker, io_uring
# udp-uring-vs-null-mmsg      io_uring engine             null tracker, recvmmsg
# udp-uring-vs-aquatic        io_uring engine             aquatic_udp, io_uring
# udp-epoll-vs-aquatic-mio    epoll engine                aquatic_udp, mio
# udp-epoll-vs-null-mmsg      epoll engine                null tracker, recvmmsg
# http-uring-vs-null          io_uring, keep-alive        null HTTP server
# http-epoll-vs-null          epoll, keep-alive           null HTTP server
# http-uring-vs-aquatic       io_uring, keep-alive        aquatic_http
# http-close-vs-opentracker   io_uring, keep_alive: false opentracker (both close after one answer)
# http-close-default-vs-opentracker  io_uring, default config (keep-alive) opentracker
# udp-hooks                   io_uring, hooks on          io_uring, no hooks
# http-hooks                  io_uring, hooks on          io_uring, no hooks
# udp-replication             io_uring, replication on    io_uring, replication off (Redis on the
#                                                         load tester's CPU; its CPU and traffic
#                                                         over the B runs are printed)
# udp-vs-baseline             io_uring, no hooks          BASELINE, io_uring, no hooks
# http-vs-baseline            io_uring, no hooks          BASELINE, io_uring, no hooks
#
# HAYATE (default target/release/hayate) is the binary; BASELINE is another hayate binary (e.g.
# a build from before a change) for the *-vs-baseline comparisons.
# Output: the harness's per-pair lines and `ratio_*` lines, under a `=== NAME` header.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
HAYATE=${HAYATE:-$ROOT/target/release/hayate}
BASELINE=${BASELINE:-$HAYATE}
export REPEATS=${REPEATS:-5} DURATION=${DURATION:-20}
CONF=$(mktemp -d)

[ -x "$HAYATE" ] || (cd "$ROOT" && cargo build --release --locked)
"$BENCH/references.sh" install >&2

# Whether hayate binary $1 has the top-level config key $2 (older builds refuse newer keys).
knows() { "$1" --print-config 2>/dev/null | grep -q "^$2:"; }

# config NAME ENGINE PROTO PORT [hooks|no-keep-alive] (NAME base: for $BASELINE)
config() {
  local file="$CONF/$1.yaml" binary=$HAYATE
  [ "$1" = base ] && binary=$BASELINE
  {
    echo "workers: 1"
    echo "engine: $2"
    echo "log: {level: warn}"
    knows "$binary" metrics && echo "metrics: {enabled: false}"
    # The load testers are one source creating up to a million torrents: the per-source
    # budget stays on (its cost is measured) but can never bind; were it left at its default
    # in one build only, that build would refuse most torrents and look faster.
    knows "$binary" per_source && echo "per_source: {new_torrents_burst: 4000000000}"
    if [ "$3" = udp ]; then
      echo "udp: {bind: [\"127.0.0.1:$4\"], connection_id_secret: \"00112233445566778899aabbccddeeff\"}"
      echo "http: {enabled: false}"
    else
      echo "udp: {enabled: false}"
      local keep_alive=""
      [ "${5:-}" = no-keep-alive ] && keep_alive=", keep_alive: false"
      echo "http: {bind: [\"127.0.0.1:$4\"], max_connections: 20000$keep_alive}"
    fi
    if [ "${5:-}" = replication ]; then
      echo "replication: {enabled: true, node_id: bench, redis: {url: \"redis://127.0.0.1:$REDIS_PORT/0\"}}"
    fi
    if [ "${5:-}" = hooks ]; then
      # Every hook that can run under the load testers, each letting the load through, so the
      # whole chain runs on every request (jwt needs a signed token per request, which they
      # cannot send; its cost is one signature check, measured apart).
      echo "prehooks:"
      echo "  - {name: client_approval, options: {deny: [\"-XX0000-\"]}}"
      echo "  - {name: torrent_approval, options: {mode: deny, hashes: [\"$(printf '00%.0s' {1..20})\"]}}"
      echo "posthooks:"
      echo "  - {name: interval_variation, options: {modify_response_probability: 0.5}}"
    fi
  } >"$file"
  echo "$file"
}

ref() { "$BENCH/references.sh" cmd "$@"; }

# A Redis for the replication comparison, on the load tester's CPU, stopped on exit.
REDIS_PORT=${REDIS_PORT:-6391}
REDIS_PID=""
start_redis() {
  command -v redis-server >/dev/null || apt-get install -y -qq redis-server >&2
  taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$CONF" >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server did not start" >&2; return 1
}
# "<commands> <input bytes> <cpu ticks>" of the bench Redis
redis_counters() {
  local stat f
  stat=$(< "/proc/$REDIS_PID/stat"); read -ra f <<< "${stat##*) }"
  echo "$(redis-cli -p "$REDIS_PORT" info stats | tr -d '\r' | awk -F: '/^total_commands_processed:/{c=$2} /^total_net_input_bytes:/{b=$2} END{print c, b}') $(( f[11] + f[12] ))"
}
trap 'rm -rf "$CONF"; [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null' EXIT

run() {
  local name=$1
  echo "=== $name"
  case $name in
    udp-uring-vs-null) A=$(ref null-udp-uring 3000); B="$HAYATE --config $(config b io_uring udp 3000)"; P=udp ;;
    udp-uring-vs-null-mmsg) A=$(ref null-udp-mmsg 3000); B="$HAYATE --config $(config b io_uring udp 3000)"; P=udp ;;
    udp-uring-vs-aquatic) A=$(ref aquatic_udp 3000); B="$HAYATE --config $(config b io_uring udp 3000)"; P=udp ;;
    udp-epoll-vs-aquatic-mio) A=$(ref aquatic_udp_mio 3000); B="$HAYATE --config $(config b epoll udp 3000)"; P=udp ;;
    udp-epoll-vs-null-mmsg) A=$(ref null-udp-mmsg 3000); B="$HAYATE --config $(config b epoll udp 3000)"; P=udp ;;
    http-uring-vs-null) A=$(ref null-http 3001); B="$HAYATE --config $(config b io_uring http 3001)"; P=http ;;
    http-epoll-vs-null) A=$(ref null-http 3001); B="$HAYATE --config $(config b epoll http 3001)"; P=http ;;
    http-uring-vs-aquatic) A=$(ref aquatic_http 3001); B="$HAYATE --config $(config b io_uring http 3001)"; P=http ;;
    http-close-vs-opentracker) A=$(ref opentracker-http 3001); B="$HAYATE --config $(config b io_uring http 3001 no-keep-alive)"; P=http-close ;;
    http-close-default-vs-opentracker) A=$(ref opentracker-http 3001); B="$HAYATE --config $(config b io_uring http 3001)"; P=http-close ;;
    udp-hooks) A="$HAYATE --config $(config a io_uring udp 3000)"; B="$HAYATE --config $(config b io_uring udp 3000 hooks)"; P=udp ;;
    http-hooks) A="$HAYATE --config $(config a io_uring http 3001)"; B="$HAYATE --config $(config b io_uring http 3001 hooks)"; P=http ;;
    # Each B run starts on an empty Redis: a warm restart of the last run's peers would
    # give every run after the first a bigger store than A's.
    udp-replication) [ -n "$REDIS_PID" ] || start_redis; A="$HAYATE --config $(config a io_uring udp 3000)"
      B="bash -c 'redis-cli -p $REDIS_PORT flushall >/dev/null; exec $HAYATE --config $(config b io_uring udp 3000 replication)'"; P=udp ;;
    udp-vs-baseline) A="$BASELINE --config $(config base io_uring udp 3000)"; B="$HAYATE --config $(config b io_uring udp 3000)"; P=udp ;;
    http-vs-baseline) A="$BASELINE --config $(config base io_uring http 3001)"; B="$HAYATE --config $(config b io_uring http 3001)"; P=http ;;
    *) echo "unknown comparison $name" >&2; return 1 ;;
  esac
  local before=""
  [ "$name" = udp-replication ] && before=$(redis_counters)
  case $P in
    udp) MODE=compare TRACKER_CMD_A="$A" TRACKER_CMD_B="$B" "$BENCH/udp_bench.sh" ;;
    http) MODE=compare TRACKER_CMD_A="$A" TRACKER_CMD_B="$B" "$BENCH/http_bench.sh" ;;
    http-close) MODE=compare KEEP_ALIVE=false TRACKER_CMD_A="$A" TRACKER_CMD_B="$B" "$BENCH/http_bench.sh" ;;
  esac 2>&1 | grep -E "^(pair|ratio|#)"
  if [ -n "$before" ]; then
    # Over the B runs' load windows (REPEATS x DURATION; A does not use Redis).
    local secs=$((REPEATS * DURATION)) hz; hz=$(getconf CLK_TCK)
    read -r c0 b0 t0 <<< "$before"; read -r c1 b1 t1 <<< "$(redis_counters)"
    awk -v c=$((c1 - c0)) -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v s="$secs" -v hz="$hz" \
      'BEGIN { printf "# redis: %.0f commands/s, %.0f bytes/s in, %.3f cores (over %d s of B runs)\n", c / s, b / s, t / hz / s, s }'
  fi
}

if [ $# -eq 0 ]; then
  set -- udp-uring-vs-null udp-uring-vs-null-mmsg udp-uring-vs-aquatic udp-epoll-vs-aquatic-mio \
    udp-epoll-vs-null-mmsg http-uring-vs-null http-epoll-vs-null http-uring-vs-aquatic \
    http-close-vs-opentracker http-close-default-vs-opentracker udp-hooks http-hooks udp-vs-baseline http-vs-baseline
fi
for name in "$@"; do run "$name"; done

#!/usr/bin/env bash
# Replication under the UDP load test: node B (io_uring, replication on, CPU 0) takes
# aquatic_udp_load_test's load through ../shared/bench/udp_bench.sh while node C (CPU 1, beside
# the load tester and Redis) applies what B publishes. Prints, for the load window:
#   - announces B answered and swarm changes B published: Redis traffic follows changes
#   - batches and bytes B appended; Redis's commands/s, bytes/s in and CPU
#   - the replication lag at C (from a batch formed at B to its application at C): p50, p99
#
#   benches/replication.sh                 (DURATION=20; HAYATE=target/release/hayate)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
HAYATE=${HAYATE:-$ROOT/target/release/hayate}
export DURATION=${DURATION:-20}
REDIS_PORT=${REDIS_PORT:-6392}
B_METRICS=127.0.0.1:6882
C_METRICS=127.0.0.1:6883
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$HAYATE" ] || (cd "$ROOT" && cargo build --release --locked)
"$BENCH/references.sh" install >&2
command -v redis-server >/dev/null || apt-get install -y -qq redis-server >&2

taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK" >/dev/null 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

node_config() {  # node_config NAME UDP_PORT METRICS
  cat <<EOF
workers: 1
engine: io_uring
log: {level: warn}
udp: {bind: ["127.0.0.1:$2"], connection_id_secret: "00112233445566778899aabbccddeeff"}
http: {enabled: false}
metrics: {bind: "$3"}
per_source: {new_torrents_burst: 4000000000}
replication: {enabled: true, node_id: $1, redis: {url: "redis://127.0.0.1:$REDIS_PORT/0"}}
EOF
}
node_config bench-b 3000 "$B_METRICS" >"$WORK/b.yaml"
node_config bench-c 3005 "$C_METRICS" >"$WORK/c.yaml"
taskset -c 1 "$HAYATE" --config "$WORK/c.yaml" 2>"$WORK/c.log" &
PIDS+=("$!")

sum() { awk -v m="$1" '$0 !~ /^#/ && index($0, m) == 1 { s += $NF } END { printf "%.0f", s }' "$2"; }
ANNOUNCES='hayate_requests_total{protocol="udp",action="announce"'
# Keep the last scrape of both nodes' metrics (B's ends with its process), and B's announces
# and published changes over time.
( while sleep 1; do
    if curl -fs "http://$B_METRICS/metrics" >"$WORK/b.tmp" 2>/dev/null; then
      mv "$WORK/b.tmp" "$WORK/b.metrics"
      echo "$(sum "$ANNOUNCES" "$WORK/b.metrics") $(sum hayate_replication_changes_published_total "$WORK/b.metrics")" >>"$WORK/b.series"
    fi
    curl -fs "http://$C_METRICS/metrics" >"$WORK/c.tmp" 2>/dev/null && mv "$WORK/c.tmp" "$WORK/c.metrics"
  done ) &
PIDS+=("$!")

redis_counters() {
  local stat f
  stat=$(< "/proc/$REDIS_PID/stat"); read -ra f <<< "${stat##*) }"
  echo "$(redis-cli -p "$REDIS_PORT" info stats | tr -d '\r' | awk -F: '/^total_commands_processed:/{c=$2} /^total_net_input_bytes:/{b=$2} END{print c, b}') $(( f[11] + f[12] )) $EPOCHREALTIME"
}
before=$(redis_counters)
REPEATS=1 TRACKER_CMD="$HAYATE --config $WORK/b.yaml" WORKDIR="$WORK/runs" "$BENCH/udp_bench.sh" 2>&1 | grep -E "^(responses|tracker|peak|#)" || true
after=$(redis_counters)
sleep 1.5

announces=$(sum "$ANNOUNCES" "$WORK/b.metrics")
published=$(sum hayate_replication_changes_published_total "$WORK/b.metrics")
batches=$(sum hayate_replication_batches_published_total "$WORK/b.metrics")
bytes=$(sum hayate_replication_bytes_published_total "$WORK/b.metrics")
coalesced=$(sum hayate_replication_changes_coalesced_total "$WORK/b.metrics")
dropped=$(sum hayate_replication_changes_dropped_total "$WORK/b.metrics")
applied=$(sum hayate_replication_changes_applied_total "$WORK/c.metrics")
echo "B: $announces announces answered, $published changes published ($(awk -v p="$published" -v a="$announces" 'BEGIN{printf "%.3f", p / a}') a change per announce), $coalesced coalesced away, $dropped dropped; $batches batches, $bytes bytes"
grep -E '^hayate_replication_changes_dropped_total' "$WORK/b.metrics" | sed 's/^/B: /'
cat "$WORK"/runs/*.tracker.log 2>/dev/null | grep -iE 'warn|error'  | head -5 | sed 's/^/B log: /' || true
grep -iE 'warn|error' "$WORK/c.log" | head -5 | sed 's/^/C log: /' || true
echo "C: $applied changes applied"
# Early in a run most announces come from peers B has not seen yet (the load tester has 2M of
# them): the ratio over the run's second half is nearer the steady state.
awk 'NF == 2 && $1 > 0 { a[n] = $1; p[n] = $2; n++ }
     END { h = int(n / 2); if (n < 4) exit;
           printf "B, second half of the run: %.3f a change per announce (%d announces)\n", (p[n-1] - p[h]) / (a[n-1] - a[h]), a[n-1] - a[h] }' "$WORK/b.series"
read -r c0 b0 t0 s0 <<< "$before"; read -r c1 b1 t1 s1 <<< "$after"
awk -v c=$((c1 - c0)) -v b=$((b1 - b0)) -v t=$((t1 - t0)) -v s0="$s0" -v s1="$s1" -v hz="$(getconf CLK_TCK)" \
  'BEGIN { s = s1 - s0; printf "redis: %.0f commands/s, %.0f bytes/s in, %.3f cores (over the %.0f s run)\n", c / s, b / s, t / hz / s, s }'
# Lag percentiles from C's histogram: the upper bound of the bucket where each is reached.
awk '/^hayate_replication_lag_seconds_bucket/ {
       match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; bound[n] = le; count[n] = $NF }
     /^hayate_replication_lag_seconds_count/ { total = $NF }
     END { if (total == 0) { print "lag: no samples"; exit }
           for (i = 1; i <= n; i++) { if (!p50 && count[i] >= total * 0.5) p50 = bound[i]; if (!p99 && count[i] >= total * 0.99) p99 = bound[i] }
           printf "lag at C (%d batches): p50 <= %s s, p99 <= %s s\n", total, p50, p99 }' "$WORK/c.metrics"

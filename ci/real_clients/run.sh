#!/usr/bin/env bash
# Real-client end-to-end test for hayate: real BitTorrent clients (libtorrent
# via Debian's python3-libtorrent, and aria2c) transfer a random file through
# the hayate tracker on loopback; the downloaded file is checked by sha256.
#
# Usage: ci/real_clients/run.sh PATH_TO_HAYATE_BINARY
#        TRACKER_PORT=PORT [PEER_HOST=ADDR] ENGINES=LABEL ci/real_clients/run.sh
#   The second form runs the cases against a tracker that is already listening on
#   127.0.0.1:PORT (TCP and UDP; IPv4 cases only, not the replicated ones), such as a
#   container's published port (ci/deploy/image.sh). ENGINES then only names the cases.
#   PEER_HOST is the address the clients listen on: the one the tracker sees them from
#   (behind a container runtime's port forwarding, its bridge's gateway, not 127.0.0.1).
#
# Needs (Debian): python3-libtorrent aria2 mktorrent iproute2 (ss), coreutils, and
# redis-server (with redis-cli) for the replicated cases.
# Output: one "PASS <case>" / "FAIL <case>: <reason>" line per case on stdout,
# then "real-clients: N passed, M failed". Diagnostics go to stderr.
# Exit status 0 only if every case passed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=/usr/bin/python3               # Debian's python, has libtorrent
CASE_TIMEOUT="${CASE_TIMEOUT:-60}"  # hard limit per case, seconds
# KEEP_WORK=1 keeps each case's temp dir (logs, alerts) for debugging.
# CASES="a b" runs only the named cases; ENGINES="epoll io_uring" (the default) the engines.
# TRACKER_PORT / PEER_HOST: see Usage.

ALL_CASES=(
  libtorrent-http-ipv4
  libtorrent-udp-ipv4
  libtorrent-http-ipv6
  libtorrent-udp-ipv6
  aria2-http-ipv4
  aria2-http-ipv6
  libtorrent-udp-ipv4-replicated
  libtorrent-http-ipv6-replicated
)
if [[ -n "${CASES:-}" ]]; then read -r -a CASES <<<"$CASES"; else CASES=("${ALL_CASES[@]}"); fi

die() { echo "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------
# One case, run as a separate process: run.sh --case NAME HAYATE REASON_FILE
# ---------------------------------------------------------------------------
PIDS=()
WORK=""
REASON_FILE=""

fail() {
  echo "$*" >"$REASON_FILE"
  exit 1
}

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # bounded wait, then SIGKILL
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ -n "${KEEP_WORK:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  fi
}

# Random port in 20000-39999 with no TCP or UDP listener on it.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 20000))
    if [[ -z "$(ss -Hlntu "( sport = :$p )" 2>/dev/null)" ]]; then
      echo "$p"; return 0
    fi
  done
  return 1
}

# Run a command in the background and wait for it (so a SIGTERM from the
# outer `timeout` interrupts the wait and the EXIT trap runs promptly).
bg_wait() {
  "$@" &
  local pid=$!
  PIDS+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  return "$rc"
}

# Show the tail of diagnostic files on stderr.
show() {
  local f
  for f in "$@"; do
    [[ -s "$f" ]] || continue
    echo "---- $CASE: tail of $(basename "$f") ----" >&2
    tail -n 40 "$f" >&2
  done
}

run_case() {
  CASE="$1" HAYATE="$2" REASON_FILE="$3"
  local case_start=$SECONDS
  trap cleanup EXIT
  trap 'exit 124' TERM INT

  local client proto fam replicated=""
  IFS=- read -r client proto fam <<<"$CASE"
  if [[ "$fam" == *-replicated ]]; then fam="${fam%-replicated}"; replicated=1; fi

  local host lhost
  if [[ "$fam" == ipv6 ]]; then host='[::1]'; lhost='::1'; else host='127.0.0.1'; lhost='127.0.0.1'; fi
  if [[ "$fam" == ipv6 ]] && ! ip -6 addr show dev lo 2>/dev/null | grep -q '::1/128'; then
    fail "no ::1 on loopback"
  fi

  WORK="$(mktemp -d -t hayate-real-clients.XXXXXX)"
  mkdir -p "$WORK/seed" "$WORK/leech"
  # Where the clients listen: where the tracker sees them from.
  local phost="$host"
  if [[ -n "${PEER_HOST:-}" ]]; then phost="$PEER_HOST"; fi

  # --- tracker(s) ---------------------------------------------------------
  # A replicated case runs two nodes on one Redis: the seeder announces only to the first,
  # the leecher only to the second.
  local redis_port="" replication="" secret=""
  if [[ -n "$replicated" ]]; then
    redis_port="$(free_port)" || fail "no free Redis port"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    PIDS+=("$!")
    local up=0
    for _ in $(seq 1 100); do
      [[ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" == PONG ]] && { up=1; break; }
      sleep 0.1
    done
    [[ "$up" == 1 ]] || { show "$WORK/redis.log"; fail "redis-server did not start"; }
  fi
  local port port2="" tpid=""
  start_tracker() {   # start_tracker PORT NAME
    local p="$1" name="$2"
    if [[ -n "$redis_port" ]]; then
      replication="replication: {enabled: true, node_id: $name, flush_interval_ms: 20, redis: {url: \"redis://127.0.0.1:$redis_port/0\"}}"
      # Nodes share the connection-id key, as nodes behind one address must (libtorrent
      # also keeps one connection id per tracker IP, whatever the port).
      secret='  connection_id_secret: "00112233445566778899aabbccddeeff"'
    fi
    cat >"$WORK/$name.yaml" <<EOF
workers: 1
engine: ${ENGINE:-auto}
log:
  level: info
udp:
  bind: ["127.0.0.1:$p", "[::1]:$p"]
$secret
http:
  bind: ["127.0.0.1:$p", "[::1]:$p"]
metrics:
  bind: "127.0.0.1:0"
announce:
  interval_secs: 5
  min_interval_secs: 1
$replication
EOF
    "$HAYATE" --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
    tpid=$!
    PIDS+=("$tpid")
    # Wait (<= 10 s) until TCP and UDP listen on both loopback addresses.
    local ok=0
    for _ in $(seq 1 100); do
      kill -0 "$tpid" 2>/dev/null || { show "$WORK/$name.log"; fail "tracker $name exited at startup"; }
      if [[ "$(ss -Hlnt "( sport = :$p )" | wc -l)" -ge 2 && \
            "$(ss -Hlnu "( sport = :$p )" | wc -l)" -ge 2 ]]; then
        ok=1; break
      fi
      sleep 0.1
    done
    [[ "$ok" == 1 ]] || { show "$WORK/$name.log"; fail "tracker $name not listening on tcp+udp :$p within 10s"; }
  }
  local tpids=()
  if [[ -n "${TRACKER_PORT:-}" ]]; then
    port="$TRACKER_PORT"      # someone else runs it
  else
    port="$(free_port)" || fail "no free tracker port"
    start_tracker "$port" tracker
    tpids+=("$tpid")
  fi
  if [[ -n "$replicated" ]]; then
    port2="$(free_port)" || fail "no free tracker port"
    while [[ "$port2" == "$port" ]]; do port2="$(free_port)"; done
    start_tracker "$port2" tracker2
    tpids+=("$tpid")
  fi

  # --- data + private torrent ------------------------------------------
  local url="$proto://$host:$port/announce"
  head -c $((3 * 1024 * 1024 + 12345)) /dev/urandom >"$WORK/seed/data.bin"
  mktorrent -p -a "$url" -o "$WORK/data.torrent" "$WORK/seed/data.bin" >/dev/null 2>"$WORK/mktorrent.log" \
    || { show "$WORK/mktorrent.log"; fail "mktorrent failed"; }
  # The leecher's copy names the second node (same info dictionary, so the same info hash).
  local leech_torrent=()
  if [[ -n "$replicated" ]]; then
    mktorrent -p -a "$proto://$host:$port2/announce" -o "$WORK/data2.torrent" "$WORK/seed/data.bin" \
      >/dev/null 2>>"$WORK/mktorrent.log" || { show "$WORK/mktorrent.log"; fail "mktorrent failed"; }
    leech_torrent=(--leech-torrent "$WORK/data2.torrent")
  fi

  local sport lport
  sport="$(free_port)" || fail "no free port"
  lport="$(free_port)" || fail "no free port"
  while [[ "$lport" == "$sport" || "$lport" == "$port" ]]; do lport="$(free_port)"; done

  local inner=$((CASE_TIMEOUT - 12))   # leave room for startup and cleanup
  case "$client" in
  libtorrent)
    local rc=0
    bg_wait timeout -k 3 "$inner" "$PY" "$HERE/transfer.py" pair \
      --torrent "$WORK/data.torrent" --data "$WORK/seed/data.bin" \
      --seed-listen "$phost:$sport" --leech-listen "$phost:$lport" \
      --leech-dir "$WORK/leech" --timeout $((inner - 5)) "${leech_torrent[@]}" \
      --log "$WORK/alerts.log" >"$WORK/transfer.out" 2>&1 || rc=$?
    if [[ "$rc" != 0 ]]; then
      show "$WORK/transfer.out" "$WORK/alerts.log" "$WORK"/tracker*.log
      local why
      why="$(grep -m1 '^FAIL' "$WORK/transfer.out" | cut -c1-300 || true)"
      case "$rc" in
        2) fail "sha256 mismatch" ;;
        124|137) fail "timed out after ${inner}s ${why}" ;;
        *) fail "transfer.py exit $rc ${why}" ;;
      esac
    fi
    ;;
  aria2)
    "$PY" "$HERE/transfer.py" seed \
      --torrent "$WORK/data.torrent" --data "$WORK/seed/data.bin" \
      --seed-listen "$phost:$sport" --ready-file "$WORK/seed.ready" \
      --timeout "$inner" --log "$WORK/alerts.log" >"$WORK/seed.out" 2>&1 &
    local spid=$!
    PIDS+=("$spid")
    ok=0
    for _ in $(seq 1 200); do      # <= 20 s for the seeder to be announced
      [[ -e "$WORK/seed.ready" ]] && { ok=1; break; }
      kill -0 "$spid" 2>/dev/null || break
      sleep 0.1
    done
    if [[ "$ok" != 1 ]]; then
      show "$WORK/seed.out" "$WORK/alerts.log" "$WORK"/tracker*.log
      fail "libtorrent seeder not seeding/announced within 20s"
    fi
    local v6opt=()
    [[ "$fam" == ipv4 ]] && v6opt=(--disable-ipv6=true)
    local rc=0
    local left=$((inner - (SECONDS - case_start)))
    ((left >= 5)) || left=5
    bg_wait timeout -k 3 "$left" aria2c \
      --dir="$WORK/leech" --listen-port="$lport" \
      --enable-dht=false --enable-dht6=false --bt-enable-lpd=false \
      --enable-peer-exchange=false --seed-time=0 \
      --bt-tracker-connect-timeout=5 --bt-tracker-timeout=10 --bt-tracker-interval=2 \
      --file-allocation=none --no-conf=true \
      --summary-interval=0 --console-log-level=warn \
      --log="$WORK/aria2.log" --log-level=info \
      "${v6opt[@]}" \
      "$WORK/data.torrent" >"$WORK/aria2.out" 2>&1 || rc=$?
    if [[ "$rc" != 0 ]]; then
      show "$WORK/aria2.out" "$WORK/aria2.log" "$WORK/alerts.log" "$WORK"/tracker*.log
      case "$rc" in
        124|137) fail "aria2c timed out" ;;
        *) fail "aria2c exit $rc" ;;
      esac
    fi
    ;;
  *) fail "unknown client $client" ;;
  esac

  # --- verify -----------------------------------------------------------
  [[ -f "$WORK/leech/data.bin" ]] || fail "downloaded file missing"
  local want got
  want="$(sha256sum <"$WORK/seed/data.bin" | cut -d' ' -f1)"
  got="$(sha256sum <"$WORK/leech/data.bin" | cut -d' ' -f1)"
  [[ "$want" == "$got" ]] || fail "sha256 mismatch: want $want got $got"
  for tpid in "${tpids[@]}"; do
    if ! kill -0 "$tpid" 2>/dev/null; then
      show "$WORK"/tracker*.log
      fail "tracker died during the case"
    fi
  done
  exit 0
}

if [[ "${1:-}" == "--case" ]]; then
  [[ $# -eq 4 ]] || die "usage: $0 --case NAME HAYATE REASON_FILE"
  run_case "$2" "$3" "$4"
fi

# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
if [[ -n "${TRACKER_PORT:-}" ]]; then
  [[ $# -eq 0 ]] || die "usage: TRACKER_PORT=PORT $0 (no binary: the tracker runs already)"
  HAYATE=-
  for case_name in "${CASES[@]}"; do
    [[ "$case_name" == *-ipv4 ]] || die "TRACKER_PORT: IPv4 cases only, not $case_name"
  done
else
  [[ $# -eq 1 ]] || die "usage: $0 PATH_TO_HAYATE_BINARY"
  HAYATE="$(realpath "$1")"
  [[ -x "$HAYATE" ]] || die "not executable: $HAYATE"
fi
for tool in "$PY" aria2c mktorrent ss timeout sha256sum; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done
"$PY" -c 'import libtorrent' 2>/dev/null || die "$PY has no libtorrent (apt install python3-libtorrent)"

tracker="hayate: $("$HAYATE" --version 2>&1 | head -n1 || true)"
[[ -n "${TRACKER_PORT:-}" ]] && tracker="tracker: 127.0.0.1:$TRACKER_PORT, peers on ${PEER_HOST:-127.0.0.1}"
echo "$tracker; libtorrent $("$PY" -c 'import libtorrent; print(libtorrent.__version__)'); $(aria2c --version | head -n1)" >&2

passed=0
failed=0
REASON="$(mktemp -t hayate-real-clients-reason.XXXXXX)"
trap 'rm -f "$REASON"' EXIT
# Every case runs on every engine (ENGINES="epoll" runs one).
for engine in ${ENGINES:-epoll io_uring}; do
for case_name in "${CASES[@]}"; do
  c="$case_name@$engine"
  : >"$REASON"
  start=$SECONDS
  rc=0
  ENGINE=$engine timeout -k 10 "$CASE_TIMEOUT" bash "$0" --case "$case_name" "$HAYATE" "$REASON" || rc=$?
  if [[ "$rc" == 0 ]]; then
    echo "PASS $c"
    passed=$((passed + 1))
  else
    reason="$(head -c 400 "$REASON" | tr '\n' ' ')"
    [[ -n "$reason" ]] || reason="exit $rc$([[ $rc == 124 ]] && echo " (case timeout ${CASE_TIMEOUT}s)")"
    echo "FAIL $c: $reason"
    failed=$((failed + 1))
  fi
  echo "     ($c took $((SECONDS - start))s)" >&2
done
done
echo "real-clients: $passed passed, $failed failed"
[[ "$failed" == 0 ]]

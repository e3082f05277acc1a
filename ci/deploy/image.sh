#!/usr/bin/env bash
# The container tests: builds the image from the Dockerfile and runs it as the Helm chart's pod
# would (its rendered config and Secret files, read-only root, all capabilities dropped, no new
# privileges, user 65532) with published TCP and UDP ports on 127.0.0.1:
#   - under the runtime's default seccomp profile: epoll, and the log says why
#   - under deploy/seccomp/hayate.json: io_uring
#   - under a profile that refuses io_uring with EPERM, as Docker 25+ and containerd 2 do:
#     epoll, and the log says EPERM
# Each run: /healthz and /readyz (the chart's probes) and /metrics (promtool check metrics)
# through the published port, the connection-id key read from its Secret file, the chart's
# `helm test` script, the real-client transfers of ci/real_clients/ (libtorrent and aria2, HTTP
# and UDP, IPv4) through the published port, and `stop` ending it with exit 0.
# Then (podman only) deploy/systemd/hayate.service runs under systemd in a container booted
# from ci/deploy/systemd-test.Containerfile: its sandbox, io_uring through its SystemCallFilter,
# the connection-id key from a file, reload (SIGHUP), the same client tests, and stop.
#
# Usage: ci/deploy/image.sh
#   CONTAINER_CLI=podman|docker (default: podman, else docker); IMAGE (default
#   localhost/hayate:test); SKIP_BUILD=1 tests an existing IMAGE; CARGO_BUILD_JOBS bounds the
#   build's compiler jobs. Where ../shared/containers/setup-podman.sh exists (this project's
#   machines, which reach no container registry), it installs podman and makes the base images,
#   and the build runs offline on the crates of ~/.cargo/registry. Elsewhere the build pulls
#   the base images and crates as any `docker build` does.
# Prints PASS/FAIL per check, then "image-tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=ci/deploy/tools.sh
. ci/deploy/tools.sh
deploy_tools   # helm (the chart's config), promtool

SHARED=${SHARED:-$ROOT/../shared}
SETUP="$SHARED/containers/setup-podman.sh"
IMAGE=${IMAGE:-localhost/hayate:test}
SYSTEMD_IMAGE=localhost/hayate-systemd-test:bookworm
CLI=${CONTAINER_CLI:-}
if [ -z "$CLI" ]; then
  if command -v podman >/dev/null; then CLI=podman
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then CLI=docker
  elif [ -x "$SETUP" ] || [ -f "$SETUP" ]; then bash "$SETUP" >/dev/null; CLI=podman
  else echo "image.sh: no podman or docker" >&2; exit 1
  fi
fi
# No registry here: the base images are made locally.
if [ "$CLI" = podman ] && [ -f "$SETUP" ] && ! podman image exists docker.io/library/rust:1-bookworm; then
  bash "$SETUP" >/dev/null
fi

WORK=$(mktemp -d -t hayate-image-test.XXXXXX)
chmod 755 "$WORK"
CONTAINERS=()
cleanup() {
  local c
  for c in "${CONTAINERS[@]}"; do "$CLI" rm -f "$c" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
check() {
  local name=$1 out rc
  shift
  # errexit inside the command, which `cmd || ...` would switch off for it (and so would
# `if check ...`: test $LAST after it instead).
  set +e
  out=$(set -e; "$@" 2>&1)
  rc=$?
  set -e
  LAST=$rc
  if [ "$rc" = 0 ]; then
    echo "PASS $name${out:+ ($(tail -n1 <<<"$out"))}"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    tail -n 40 <<<"$out" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

build() {
  local args=(build -t "$IMAGE") start=$SECONDS
  [ -z "${CARGO_BUILD_JOBS:-}" ] || args+=(--build-arg "CARGO_BUILD_JOBS=$CARGO_BUILD_JOBS")
  if [ "$CLI" = podman ] && [ -f "$SHARED/containers/cargo-offline.toml" ] && [ -d "$HOME/.cargo/registry" ]; then
    args+=(--network=none -v "$HOME/.cargo/registry:/usr/local/cargo/registry:O"
      -v "$SHARED/containers/cargo-offline.toml:/usr/local/cargo/config.toml:ro")
  fi
  "$CLI" "${args[@]}" . >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; return 1; }
  echo "built in $((SECONDS - start)) s"
}

image_facts() {
  local size user version
  size=$("$CLI" image inspect "$IMAGE" --format '{{.Size}}')
  user=$("$CLI" image inspect "$IMAGE" --format '{{.Config.User}}')
  version=$("$CLI" run --rm "$IMAGE" --version)
  [ "$user" = 65532:65532 ] || { echo "user $user"; return 1; }
  "$CLI" image inspect "$IMAGE" --format '{{json .Config.Labels}}' | grep -q '"org.opencontainers.image.version"'
  echo "$version, $((size / 1000000)) MB, user $user"
}

free_port() {
  "$PY" -c '
import socket
while True:
    t, u = socket.socket(), socket.socket(type=socket.SOCK_DGRAM)
    t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    try:
        u.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
}

# The files the chart gives its pod, from its default values: config.yaml and secrets/.
pod_files() {
  helm template hayate deploy/helm/hayate >"$WORK/render.yaml"
  "$PY" ci/deploy/chart.py pod-files "$WORK/render.yaml" "$WORK/pod" off
  chmod -R a+rX "$WORK/pod"
}

# prepare NAME: a container name and fresh ports, in this shell (check runs in a subshell).
prepare() {
  NAME="hayate-test-$1-$$"
  PORT=$(free_port)
  MPORT=$(free_port)
  CONTAINERS+=("$NAME")
}

# start SECCOMP-OPTION...: the image as the chart's pod, on the published ports.
start() {
  "$CLI" run -d --name "$NAME" --read-only --cap-drop ALL --security-opt no-new-privileges \
    --user 65532:65532 "$@" \
    -v "$WORK/pod/config.yaml:/etc/hayate/config.yaml:ro" -v "$WORK/pod/secrets:/etc/hayate/secrets:ro" \
    -p "127.0.0.1:$PORT:6969/tcp" -p "127.0.0.1:$PORT:6969/udp" -p "127.0.0.1:$MPORT:6880/tcp" \
    "$IMAGE" >/dev/null
  wait_ready
}

wait_ready() {
  local i
  for i in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MPORT/readyz")" = 200 ] && return 0
    sleep 0.2
  done
  echo "not ready on 127.0.0.1:$MPORT within 20 s"
  logs
  return 1
}

logs() {
  if [ -n "${UNIT:-}" ]; then "$CLI" exec "$NAME" journalctl -u hayate --no-pager -o cat
  else "$CLI" logs "$NAME" 2>&1
  fi
}

# engine WANT REASON: the log and hayate_engine_info say which engine serves, and why.
engine() {
  local want=$1 reason=${2:-} label log
  log=$(logs)
  label=$([ "$want" = epoll ] && echo Epoll || echo IoUring)
  grep -q "hayate is serving.*\"\?engine\"\?[=:]\"\?$label" <<<"$log" || { echo "$log"; return 1; }
  if [ -n "$reason" ]; then
    grep -q "io_uring unavailable, using epoll: .*$reason" <<<"$log" || { echo "$log"; return 1; }
  fi
  curl -sf "http://127.0.0.1:$MPORT/metrics" | grep -q "^hayate_engine_info{engine=\"$want\"} 1" || return 1
  grep -o "io_uring unavailable, using epoll: [^\"]*" <<<"$log" || echo "engine $want"
}

probes() {
  local path code
  for path in healthz readyz; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MPORT/$path")
    [ "$code" = 200 ] || { echo "/$path: $code"; return 1; }
  done
  curl -sf "http://127.0.0.1:$MPORT/metrics" >"$WORK/metrics.txt"
  promtool check metrics <"$WORK/metrics.txt"
  echo "/healthz 200, /readyz 200, /metrics $(grep -c '^hayate_' "$WORK/metrics.txt") hayate samples, promtool ok"
}

# The key came from the Secret file: no warning about a random key.
secret_loaded() {
  local log
  log=$(logs)
  grep -q "hayate is serving" <<<"$log" || { echo "$log"; return 1; }
  if grep -q "connection_id_secret is not set" <<<"$log"; then echo "the key was not loaded"; return 1; fi
  echo "connection-id key from its Secret file"
}

helm_test_script() {
  HAYATE_HOST=127.0.0.1 HAYATE_PORT=$PORT "$PY" deploy/helm/hayate/files/announce_test.py
}

# The address the tracker sees the clients from (BEP 24 `external ip` of an announce): behind
# a runtime's port forwarding, its bridge's gateway on this machine, where the clients listen.
peer_host() {
  "$PY" - "$PORT" <<'PY'
import ipaddress, sys, urllib.request
q = "info_hash=%s&peer_id=-HT0001-000000000000&port=1&uploaded=0&downloaded=0&left=0&event=stopped" % ("%01" * 20)
body = urllib.request.urlopen("http://127.0.0.1:%s/announce?%s" % (sys.argv[1], q), timeout=5).read()
i = body.index(b"11:external ip") + len(b"11:external ip")
n, rest = body[i:].split(b":", 1)
print(ipaddress.ip_address(rest[:int(n)]))
PY
}

real_clients() {
  local engine=$1 host
  host=$(peer_host)
  TRACKER_PORT=$PORT PEER_HOST=$host ENGINES=$engine \
    CASES="libtorrent-http-ipv4 libtorrent-udp-ipv4 aria2-http-ipv4" ci/real_clients/run.sh
  echo "peers seen from $host"
}

stop_exit_0() {
  local start=$SECONDS code
  "$CLI" stop -t 10 "$NAME" >/dev/null
  code=$("$CLI" inspect "$NAME" --format '{{.State.ExitCode}}')
  [ "$code" = 0 ] || { logs | tail -n 5; echo "exit $code"; return 1; }
  echo "exit 0 after $((SECONDS - start)) s"
}

# A profile that refuses io_uring with EPERM, as the defaults of Docker 25+ and containerd 2 do.
eperm_profile() {
  "$PY" - deploy/seccomp/hayate.json "$WORK/eperm.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
for rule in p["syscalls"]:
    if "io_uring_setup" in rule["names"]:
        rule.update(action="SCMP_ACT_ERRNO", errnoRet=1)
json.dump(p, open(sys.argv[2], "w"))
PY
}

run_suite() {   # run_suite LABEL ENGINE REASON SECCOMP-OPTION...
  local label=$1 want=$2 reason=$3
  shift 3
  prepare "$label"
  check "start@$label" start "$@"
  [ "$LAST" = 0 ] || return 0
  check "engine@$label" engine "$want" "$reason"
  check "probes@$label" probes
  check "secret@$label" secret_loaded
  check "helm-test-script@$label" helm_test_script
  [ "${CLIENTS:-1}" = 0 ] || check "real-clients@$label" real_clients "$want"
  check "stop@$label" stop_exit_0
}

systemd_unit() {
  local dir="$WORK/systemd"
  mkdir -p "$dir"
  local id
  id=$("$CLI" create "$IMAGE")
  "$CLI" cp "$id:/usr/local/bin/hayate" "$dir/hayate"
  "$CLI" rm "$id" >/dev/null
  cp deploy/container/config.yaml "$dir/config.yaml"
  printf 'udp:\n  connection_id_secret_file: /etc/hayate/connection-id-secret\n' >>"$dir/config.yaml"
  "$PY" -c 'import secrets; print(secrets.token_hex(16))' >"$dir/connection-id-secret"
  chmod -R a+rX "$dir"
  # --privileged: systemd in the container stands for PID 1 of a host, with the capabilities
  # it needs to set up the unit's sandbox (namespaces, seccomp); the sandbox is what is tested.
  "$CLI" run -d --name "$NAME" --systemd=always --privileged \
    -v "$dir/hayate:/usr/local/bin/hayate:ro" \
    -v "$ROOT/deploy/systemd/hayate.service:/etc/systemd/system/hayate.service:ro" \
    -v "$dir/config.yaml:/etc/hayate/config.yaml:ro" \
    -v "$dir/connection-id-secret:/etc/hayate/connection-id-secret:ro" \
    -p "127.0.0.1:$PORT:6969/tcp" -p "127.0.0.1:$PORT:6969/udp" -p "127.0.0.1:$MPORT:6880/tcp" \
    "$SYSTEMD_IMAGE" >/dev/null
  local i state=""
  for i in $(seq 1 50); do
    state=$("$CLI" exec "$NAME" systemctl is-system-running 2>/dev/null || true)
    [[ "$state" == running || "$state" == degraded ]] && break
    sleep 0.2
  done
  "$CLI" exec "$NAME" systemctl start hayate
  wait_ready
  echo "started under systemd ($state)"
}

sandbox() {
  local status pid
  pid=$("$CLI" exec "$NAME" systemctl show -p MainPID --value hayate)
  [ "$pid" != 0 ] || { logs | tail -n 5; echo "hayate.service is not running"; return 1; }
  status=$("$CLI" exec "$NAME" cat "/proc/$pid/status")
  grep -q '^CapEff:[[:space:]]*0000000000000000' <<<"$status"
  grep -q '^NoNewPrivs:[[:space:]]*1' <<<"$status"
  grep -q '^Seccomp:[[:space:]]*2' <<<"$status"
  if grep -q '^Uid:[[:space:]]*0[[:space:]]' <<<"$status"; then echo "runs as root"; return 1; fi
  echo "$(grep '^Uid:' <<<"$status" | awk '{print "uid " $2}'), no capabilities, no new privileges, seccomp filter"
}

reload() {
  "$CLI" exec "$NAME" systemctl reload hayate
  sleep 0.5
  logs | grep -q "SIGHUP" || { logs | tail -n 5; return 1; }
  echo "systemctl reload: SIGHUP"
}

unit_stop() {
  "$CLI" exec "$NAME" systemctl stop hayate
  local result
  result=$("$CLI" exec "$NAME" systemctl show -p Result -p ExecMainStatus hayate | tr '\n' ' ')
  [[ "$result" == *"Result=success"* && "$result" == *"ExecMainStatus=0"* ]] || { echo "$result"; return 1; }
  "$CLI" stop -t 10 "$NAME" >/dev/null
  echo "systemctl stop: exit 0"
}

if [ "${SKIP_BUILD:-0}" = 1 ]; then
  check image-present "$CLI" image inspect "$IMAGE" --format '{{.Id}}'
else
  check build build
fi
if [ "$failed" = 0 ]; then
  check image image_facts
  check pod-files pod_files
  default_reason=ENOSYS
  [ "$CLI" = docker ] && default_reason=EPERM
  run_suite default-seccomp epoll "$default_reason"
  run_suite io_uring-seccomp io_uring "" --security-opt "seccomp=$ROOT/deploy/seccomp/hayate.json"
  eperm_profile
  CLIENTS=0 run_suite eperm-seccomp epoll EPERM --security-opt "seccomp=$WORK/eperm.json"
  if [ "$CLI" = podman ]; then
    check systemd-image "$CLI" build -q -t "$SYSTEMD_IMAGE" -f ci/deploy/systemd-test.Containerfile ci/deploy
    prepare systemd
    UNIT=1
    check systemd-start systemd_unit
    if [ "$LAST" = 0 ]; then
      check systemd-sandbox sandbox
      check systemd-engine engine io_uring ""
      check systemd-key-file secret_loaded
      check systemd-probes probes
      check systemd-helm-test-script helm_test_script
      check systemd-real-clients real_clients io_uring
      check systemd-reload reload
      check systemd-stop unit_stop
    fi
  else
    echo "(the systemd unit test needs podman's --systemd=always: skipped under $CLI)"
  fi
fi
echo "image-tests: $passed passed, $failed failed"
[ "$failed" = 0 ]

#!/usr/bin/env bash
# The deployment checks that need no container runtime (about a minute; ci/test.sh runs them):
#   - versions: Cargo.toml, the chart's appVersion and the Dockerfile's label agree
#   - hadolint on the Dockerfile and the systemd test image's Containerfile: no findings
#   - the seccomp profile: the runtime's default plus io_uring (regenerated where podman's
#     default of Debian 12 is installed)
#   - the chart's config tree, defaults and schema match hayate's config.yaml key for key
#   - helm lint --strict and helm template with the default values and each shape in
#     deploy/helm/hayate/ci/*-values.yaml, with helm 4 and helm 3 (the same renders); values
#     the chart must refuse are refused
#   - kubernetes-validate --strict on every render against Kubernetes 1.26 and 1.37 (the
#     oldest and newest the chart supports), the Prometheus Operator objects against their CRDs
#   - the config each render gives its pod passes `hayate --check-config`, with the Secrets as
#     the pod gets them (replication: sections included)
#   - checkov --framework helm: no failed check, every skipped one justified in the chart
#   - promtool: the alerts (check rules, and the unit tests in alerts_test.yaml), every query of
#     the Grafana dashboard, and every metric they name is one hayate serves
#   - systemd-analyze verify (no output at all) and security --offline=true: exposure <= 2.0
# Usage: ci/deploy/check.sh   (HAYATE=path/to/hayate; default target/debug/hayate, built if
# missing). Prints PASS/FAIL per check, then "deploy-checks: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
# shellcheck source=ci/deploy/tools.sh
. ci/deploy/tools.sh
deploy_tools

HAYATE=${HAYATE:-target/debug/hayate}
[ -x "$HAYATE" ] || cargo build --locked --bin hayate
HAYATE=$(realpath "$HAYATE")
CHART=deploy/helm/hayate
# checkov renders the chart itself; in the namespace it will be installed in, as helm install
# -n would (rendered in "default", every object fails CKV_K8S_21, "do not use the default
# namespace", whatever the chart says).
export HELM_NAMESPACE=hayate
KUBE_VERSIONS="1.26.0 1.37.0"
REPLICATED="redis sentinel cluster"

WORK=$(mktemp -d -t hayate-deploy-check.XXXXXX)
HAYATE_PID=""
cleanup() {
  if [ -n "$HAYATE_PID" ]; then kill "$HAYATE_PID" 2>/dev/null || true; wait "$HAYATE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
# check NAME COMMAND...: PASS with the command's last line, or FAIL with its output.
check() {
  local name=$1 out rc
  shift
  # errexit inside the command, which `cmd || ...` would switch off for it (and so would
# `if check ...`).
  set +e
  out=$(set -e; "$@" 2>&1)
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    echo "PASS $name${out:+ ($(tail -n1 <<<"$out"))}"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    tail -n 40 <<<"$out" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

shapes() {
  echo default
  for f in "$CHART"/ci/*-values.yaml; do basename "$f" -values.yaml; done
}
values_of() { [ "$1" = default ] || echo "-f $CHART/ci/$1-values.yaml"; }
replicated() { [[ " $REPLICATED " == *" $1 "* ]]; }

versions() {
  local cargo chart docker
  cargo=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
  chart=$(sed -n 's/^appVersion: "\(.*\)"/\1/p' "$CHART/Chart.yaml")
  docker=$(sed -n 's/^ARG VERSION=//p' Dockerfile)
  [ "$cargo" = "$chart" ] && [ "$cargo" = "$docker" ] || {
    echo "Cargo.toml $cargo, Chart.yaml appVersion $chart, Dockerfile VERSION $docker"
    return 1
  }
  echo "$cargo"
}

lint_images() {
  hadolint --no-color Dockerfile ci/deploy/systemd-test.Containerfile
  echo "hadolint $(hadolint --version | awk '{print $NF}'): no findings"
}

seccomp_profile() {
  local profile=deploy/seccomp/hayate.json
  "$PY" - "$profile" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
allow = [r for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"]
always = {n for r in allow if not (r.get("args") or r.get("includes") or r.get("excludes"))
          for n in r["names"]}
some = {n for r in allow for n in r["names"]}   # socket, for one, only for some families
missing = {"io_uring_setup", "io_uring_enter", "io_uring_register"} - always
missing |= {"socket", "bind", "sendmmsg", "recvmmsg", "epoll_pwait", "accept4"} - some
assert not missing, "not allowed: %s" % sorted(missing)
assert p["defaultAction"] == "SCMP_ACT_ERRNO", p["defaultAction"]
PY
  if [ "$(dpkg-query -W -f '${Version}' golang-github-containers-common 2>/dev/null)" = 0.50.1+ds1-4 ]; then
    deploy/seccomp/generate.py /usr/share/containers/seccomp.json "$WORK/seccomp.json"
    cmp "$WORK/seccomp.json" "$profile"
    echo "podman's default (containers-common 0.50.1) plus io_uring, regenerated identical"
  else
    echo "allows io_uring (podman's default of Debian 12 not installed here: not regenerated)"
  fi
}

config_keys() {
  "$HAYATE" --print-config >"$WORK/default.yaml"
  "$PY" ci/deploy/chart.py keys "$WORK/default.yaml" "$CHART/values.yaml" "$CHART/values.schema.json"
}

lint() {
  # shellcheck disable=SC2046
  helm lint --strict "$CHART" $(values_of "$1") | grep -v '^$'
}

# refused NAME EXPECTED-TEXT HELM-ARGS...: the chart refuses these values, saying EXPECTED-TEXT.
refused() {
  local expect=$1 out
  shift
  if out=$(helm template hayate "$CHART" "$@" 2>&1); then
    echo "rendered, but should have been refused"
    return 1
  fi
  grep -q -- "$expect" <<<"$out" || { echo "$out"; echo "(expected: $expect)"; return 1; }
  echo "refused: $(grep -m1 -- "$expect" <<<"$out" | sed 's/^ *//')"
}

render() {
  # shellcheck disable=SC2046
  helm template hayate "$CHART" $(values_of "$1") >"$WORK/$1.yaml"
  echo "$(grep -c '^kind:' "$WORK/$1.yaml") objects"
}

# helm 3 renders every shape as helm 4 does (the generated key and its checksum aside), and
# its schema validator refuses what helm 4's does.
helm3_same() {
  local shape args n=0
  for shape in $(shapes); do
    # shellcheck disable=SC2046
    helm3 lint --strict "$CHART" $(values_of "$shape") >/dev/null
    # shellcheck disable=SC2046
    helm3 template hayate "$CHART" $(values_of "$shape") >"$WORK/helm3-$shape.yaml"
    diff <(grep -v 'checksum/secrets\|connection-id-secret:' "$WORK/helm3-$shape.yaml") \
      <(grep -v 'checksum/secrets\|connection-id-secret:' "$WORK/$shape.yaml")
    n=$((n + 1))
  done
  if helm3 template hayate "$CHART" --set replicaCount=3 >/dev/null 2>&1; then
    echo "helm 3 rendered replicaCount=3 without replication"
    return 1
  fi
  echo "$(helm3 version --template '{{.Version}}'): lint --strict and the same $n renders"
}

kube_validate() {
  local shape=$1 v out
  for v in $KUBE_VERSIONS; do
    out=$(kubernetes-validate --strict -k "$v" "$WORK/$shape.yaml" 2>&1) || { echo "$out"; return 1; }
    # Only the Prometheus Operator kinds may lack a schema (crds.mjs checks them).
    if grep -v '^INFO' <<<"$out" | grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\) "; then
      return 1
    fi
  done
  "$PY" -c 'import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))' \
    <"$WORK/$shape.yaml" | node ci/deploy/crds.mjs >"$WORK/crds.out" || { cat "$WORK/crds.out"; return 1; }
  echo "$(grep -c '^INFO' <<<"$out") objects valid on $KUBE_VERSIONS; $(cat "$WORK/crds.out")"
}

pod_config() {
  local shape=$1 dir="$WORK/pod-$1" removed
  mkdir -p "$dir"
  local expect=off
  replicated "$shape" && expect=on
  "$PY" ci/deploy/chart.py pod-files "$WORK/$shape.yaml" "$dir" "$expect"
  "$PY" ci/deploy/chart.py local-config "$dir" "$dir/local.yaml"
  "$HAYATE" --check-config "$dir/local.yaml"
  echo "hayate --check-config: ok"
}

checkov_chart() {
  local shape=$1 args=() out
  [ "$shape" = default ] || args=(--var-file "$CHART/ci/$shape-values.yaml")
  out=$(checkov -d "$CHART" --framework helm --skip-download --compact "${args[@]}" 2>&1) || {
    grep -B1 -A2 'FAILED for' <<<"$out" | head -n 60
    return 1
  }
  grep -q 'Failed checks: 0,' <<<"$out" || { echo "$out" | tail -n 40; return 1; }
  grep -m1 'Passed checks:' <<<"$out"
}

skips_justified() {
  local bad
  bad=$(grep -rhoE 'checkov\.io/skip[0-9]+: "?CKV[0-9A-Z_]+(=.{0,20})?' "$CHART/templates" |
    grep -vE '=.{20}' || true)
  [ -z "$bad" ] || { echo "skipped without a reason: $bad"; return 1; }
  echo "$(grep -rc 'checkov.io/skip' "$CHART/templates" | awk -F: '{s+=$2} END {print s}') skips, each with its reason"
}

alerts() {
  mkdir -p "$WORK/alerts"
  helm template hayate "$CHART" -f "$CHART/ci/monitoring-values.yaml" >"$WORK/alerts/render.yaml"
  "$PY" ci/deploy/chart.py rules "$WORK/alerts/render.yaml" "$WORK/alerts/rules.yaml"
  cp ci/deploy/alerts_test.yaml "$WORK/alerts/"
  promtool check rules "$WORK/alerts/rules.yaml"
  promtool test rules "$WORK/alerts/alerts_test.yaml"
  echo "promtool check rules and test rules: $(grep -c '^  - name:' ci/deploy/alerts_test.yaml) alert tests pass"
}

dashboard() {
  "$PY" ci/deploy/chart.py dashboard "$CHART/dashboards/hayate.json" "$WORK/dashboard.yaml"
  promtool check rules "$WORK/dashboard.yaml" | tail -n1
}

# hayate on loopback for its /metrics: the names the alerts and the dashboard query exist.
metric_names() {
  local port
  port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # With a pre-hook and a jwt hook (an RSA key of openssl's), whose metrics exist only then.
  openssl genrsa 2048 2>/dev/null | openssl rsa -noout -modulus | "$PY" -c '
import base64, json, sys
n = bytes.fromhex(sys.stdin.read().strip().split("=")[1])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "RSA", "kid": "k", "use": "sig", "alg": "RS256",
                            "n": b64(n), "e": "AQAB"}]}))' >"$WORK/jwks.json"
  cat >"$WORK/metrics.yaml" <<EOF
workers: 1
udp:
  enabled: false
http:
  bind: ["127.0.0.1:0"]
metrics:
  bind: "127.0.0.1:$port"
prehooks:
  - name: client_approval
    options: {deny: ["-XX"]}
  - name: jwt
    options: {issuer: i, audience: a, jwks_file: "$WORK/jwks.json"}
EOF
  "$HAYATE" --config "$WORK/metrics.yaml" 2>"$WORK/metrics.log" &
  HAYATE_PID=$!
  local i
  for i in $(seq 1 50); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$port/metrics" >"$WORK/metrics.txt"
  kill "$HAYATE_PID"
  wait "$HAYATE_PID" || true
  HAYATE_PID=""
  promtool check metrics <"$WORK/metrics.txt"
  "$PY" ci/deploy/chart.py metric-names "$WORK/metrics.txt" "$WORK/alerts/rules.yaml" \
    "$CHART/dashboards/hayate.json"
}

systemd_verify() {
  # The unit as shipped, but for where the binary is (verify wants it to exist).
  mkdir -p "$WORK/systemd"
  sed "s#/usr/local/bin/hayate#$HAYATE#" deploy/systemd/hayate.service >"$WORK/systemd/hayate.service"
  local out
  out=$(systemd-analyze verify --man=no "$WORK/systemd/hayate.service" 2>&1)
  # verify exits 0 on unknown keys and sections: any output at all fails.
  [ -z "$out" ] || { echo "$out"; return 1; }
  echo "systemd-analyze verify: no output"
}

systemd_security() {
  local out score
  out=$(systemd-analyze security --offline=true "$ROOT/deploy/systemd/hayate.service" 2>&1)
  score=$(sed -n 's/.*Overall exposure level for hayate.service: \([0-9.]*\).*/\1/p' <<<"$out")
  [ -n "$score" ] || { echo "$out"; return 1; }
  awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || { grep '✗' <<<"$out"; echo "exposure $score > 2.0"; return 1; }
  echo "exposure $score (<= 2.0)"
}

check versions versions
check hadolint lint_images
check seccomp-profile seccomp_profile
check chart-config-keys config_keys
for shape in $(shapes); do
  check "helm-lint@$shape" lint "$shape"
  check "helm-template@$shape" render "$shape"
  check "kubernetes-validate@$shape" kube_validate "$shape"
  check "pod-config@$shape" pod_config "$shape"
  check "checkov@$shape" checkov_chart "$shape"
done
check helm3 helm3_same
check checkov-skips-justified skips_justified
check refuse-replicas-without-replication refused "replication/enabled" --set replicaCount=3
check refuse-connection-id-secret-in-values refused "connection_id_secret" \
  --set config.udp.connection_id_secret=00112233445566778899aabbccddeeff
check refuse-redis-password-in-url refused "redis/url" --set config.replication.enabled=true \
  --set replicaCount=2 --set config.replication.redis.url=redis://u:secret@redis:6379/0
check refuse-replication-without-redis refused "needs config.replication.redis.url" \
  --set config.replication.enabled=true
check refuse-metrics-disabled refused "metrics/enabled" --set config.metrics.enabled=false
check refuse-short-grace-period refused "terminationGracePeriodSeconds must exceed" \
  --set terminationGracePeriodSeconds=6
check alerts alerts
check dashboard-queries dashboard
check metric-names metric_names
check systemd-verify systemd_verify
check systemd-security systemd_security

echo "deploy-checks: $passed passed, $failed failed"
[ "$failed" = 0 ]

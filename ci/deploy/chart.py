"""Helpers of ci/deploy/check.sh and image.sh that read rendered charts (PyYAML: checkov's).

    chart.py pod-files RENDER DIR on|off   the files the chart's pod gets: DIR/config.yaml (from the
                                       ConfigMap) and DIR/secrets/<file> (from the chart's
                                       Secrets, or a stand-in for an existingSecret); checks that
                                       no secret is in the ConfigMap and that `replication:` is
                                       there exactly when the values enable it (on)
    chart.py local-config DIR OUT      DIR/config.yaml with its secret paths pointing into DIR
    chart.py keys DEFAULT VALUES SCHEMA  the chart's config tree matches hayate's
    chart.py rules RENDER OUT          the PrometheusRule's groups as a promtool rules file
    chart.py dashboard DASHBOARD OUT   each dashboard query as a recording rule, for promtool
    chart.py metric-names METRICS FILE...  every hayate_/process_ metric the files query is
                                       in METRICS (a /metrics scrape)
"""

import base64
import json
import os
import re
import secrets
import sys

import yaml

SECRETS_DIR = "/etc/hayate/secrets"
# Values of the chart's config that differ from hayate's embedded default, on purpose.
CHART_DEFAULTS = {
    ("workers",): 2,
    ("log", "format"): "json",
    ("metrics", "bind"): "0.0.0.0:6880",
    ("replication", "redis", "url"): "",
}
# Keys the chart sets itself (from Secrets) and the values must leave empty.
SECRET_KEYS = {
    ("udp", "connection_id_secret"),
    ("udp", "connection_id_secret_file"),
    ("replication", "redis", "password_file"),
}


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(objects, kind, suffix=""):
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]


def fail(message):
    print("chart.py: " + message, file=sys.stderr)
    sys.exit(1)


def pod_files(render, out, replication):
    objects = docs(render)
    deployment = find(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    configmap = find(objects, "ConfigMap", deployment["metadata"]["name"])[0]
    text = configmap["data"]["config.yaml"]
    config = yaml.safe_load(text)
    os.makedirs(out + "/secrets", exist_ok=True)
    with open(out + "/config.yaml", "w") as f:
        f.write(text)
    ours = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    for source in volume["projected"]["sources"]:
        ref = source["secret"]
        item = ref["items"][0]
        if ref["name"] in ours:
            value = base64.b64decode(ours[ref["name"]]["data"][item["key"]]).decode()
        else:  # an existingSecret: a stand-in of the right form
            value = secrets.token_hex(16)
        if value and value in text:
            fail("the value of Secret %s is in the ConfigMap" % ref["name"])
        with open("%s/secrets/%s" % (out, item["path"]), "w") as f:
            f.write(value + "\n")
    files = sorted(os.listdir(out + "/secrets"))
    replicated = "replication" in config
    if replicated != (replication == "on"):
        fail("replication: expected %s, the config %s it" % (replication, "has" if replicated else "lacks"))
    if "redis-password" in files and not replicated:
        fail("a Redis password without replication")
    if re.search(r"(?i)password:|connection_id_secret:", text):
        fail("a secret key in the ConfigMap")
    print("config keys: %s; secrets: %s%s" % (len(config), ", ".join(files),
                                                "; replication on" if replicated else ""))


def local_config(directory, out):
    with open(directory + "/config.yaml") as f:
        config = yaml.safe_load(f)
    text = yaml.safe_dump(config, sort_keys=False).replace(SECRETS_DIR, directory + "/secrets")
    with open(out, "w") as f:
        f.write(text)


def leaves(tree, path=()):
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from leaves(v, path + (k,))
    else:
        yield path, tree


def keys(default_yaml, values_yaml, schema_json):
    with open(default_yaml) as f:
        default = dict(leaves(yaml.safe_load(f)))
    with open(values_yaml) as f:
        values = yaml.safe_load(f)["config"]
    chart = dict(leaves(values))
    problems = []
    for path in sorted(set(default) - set(chart) - SECRET_KEYS):
        problems.append("config.%s is in hayate's config.yaml but not in values.yaml" % ".".join(path))
    for path in sorted(set(chart) - set(default)):
        problems.append("config.%s is in values.yaml but not in hayate's config.yaml" % ".".join(path))
    for path in sorted(set(chart) & set(default)):
        want = CHART_DEFAULTS.get(path, default[path])
        if chart[path] != want:
            problems.append("config.%s: values.yaml %r, expected %r" % (".".join(path), chart[path], want))
    with open(schema_json) as f:
        schema = json.load(f)["properties"]["config"]

    def schema_paths(node, path=()):
        props = node.get("properties")
        if not props:
            yield path
            return
        for k, v in props.items():
            yield from schema_paths(v, path + (k,))

    in_schema = set(schema_paths(schema))
    for path in sorted(set(default) - in_schema):
        problems.append("config.%s is not in values.schema.json" % ".".join(path))
    for path in sorted(in_schema - set(default)):
        problems.append("config.%s is in values.schema.json but not in hayate's config.yaml" % ".".join(path))
    if problems:
        fail("\n  ".join(["the chart's config tree differs from hayate's:"] + problems))
    print("%d keys agree" % len(chart))


def rules(render, out):
    rule = find(docs(render), "PrometheusRule")[0]
    with open(out, "w") as f:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, f, sort_keys=False)
    print("%d alerts" % sum(len(g["rules"]) for g in rule["spec"]["groups"]))


def dashboard(path, out):
    with open(path) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # Grafana's variables, as Prometheus would get them.
    subst = [("$__rate_interval", "1m"), ('"$job"', '"hayate-metrics"'), ('"$pod"', '".*"')]
    group = []
    for i, expr in enumerate(exprs):
        for a, b in subst:
            expr = expr.replace(a, b)
        if "$" in expr:
            fail("unknown variable in %r" % expr)
        group.append({"record": "dashboard:query_%d" % i, "expr": expr})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": group}]}, f, sort_keys=False)
    print("%d queries" % len(exprs))


def metric_names(metrics, files):
    with open(metrics) as f:
        served = set(re.findall(r"^([a-z_:][a-z0-9_:]*?)(?:_bucket|_sum|_count)?[{ ]", f.read(), re.M))
    wanted = set()
    for path in files:
        with open(path) as f:
            wanted |= set(re.findall(r"\b((?:hayate|process)_[a-z0-9_]+)", f.read()))
    wanted = {re.sub(r"_(bucket|sum|count)$", "", w) for w in wanted}
    missing = sorted(wanted - served)
    if missing:
        fail("queried but not served: %s" % ", ".join(missing))
    print("%d metric names, all served" % len(wanted))


def main(argv):
    commands = {"pod-files": pod_files, "local-config": local_config, "keys": keys,
                "rules": rules, "dashboard": dashboard}
    if argv[1:2] == ["metric-names"]:
        return metric_names(argv[2], argv[3:])
    commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)

#!/usr/bin/env python3
"""Writes a seccomp profile that is a container runtime's default plus the three io_uring
system calls, which hayate's io_uring engine needs and which the defaults of Docker 25+,
containerd 2 and podman refuse.

    deploy/seccomp/generate.py [DEFAULT_PROFILE [OUTPUT]]

DEFAULT_PROFILE is the runtime's default profile in the Docker/OCI JSON format (default:
podman's, /usr/share/containers/seccomp.json, from Debian's golang-github-containers-common);
OUTPUT defaults to stdout. deploy/seccomp/hayate.json was written from Debian 12's podman default
(containers-common 0.50.1) this way. Another runtime's default in the same format gives a
profile that differs from that runtime's own only by io_uring.

The profile keeps every other rule of its input as it is: io_uring is added in a rule of its
own, and taken out of any rule that refuses it.
"""

import json
import sys

IO_URING = ["io_uring_enter", "io_uring_register", "io_uring_setup"]


def with_io_uring(profile):
    rules = []
    for rule in profile.get("syscalls") or []:
        names = [n for n in rule.get("names", []) if n not in IO_URING]
        if names:
            rules.append(dict(rule, names=names))
    rules.append({
        "names": IO_URING,
        "action": "SCMP_ACT_ALLOW",
        "args": [],
        "comment": "hayate: its io_uring engine (the runtime's default refuses these)",
        "includes": {},
        "excludes": {},
    })
    return dict(profile, syscalls=rules)


def main(argv):
    src = argv[1] if len(argv) > 1 else "/usr/share/containers/seccomp.json"
    with open(src) as f:
        profile = json.load(f)
    text = json.dumps(with_io_uring(profile), indent=2) + "\n"
    if len(argv) > 2:
        with open(argv[2], "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

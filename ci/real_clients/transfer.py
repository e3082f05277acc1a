#!/usr/bin/python3
"""Real-client transfer helper for hayate's end-to-end test (ci/real_clients/run.sh).

Must run under Debian's /usr/bin/python3, which has python3-libtorrent.

Modes:
  pair  Seeder and leecher libtorrent sessions in this process; the seeder
        seeds DATA, the leecher downloads it into --leech-dir via the tracker
        in the .torrent. Exit 0 only if the downloaded file's sha256 equals
        the seed file's.
  seed  A libtorrent seeder only. Once it is seeding and has had a tracker
        reply it touches --ready-file, then seeds until SIGTERM/SIGINT or
        --timeout (used to serve another client, e.g. aria2c).

All libtorrent alerts are written with timestamps to --log for diagnosis.
Exit codes: 0 ok, 1 transfer failed/timed out, 2 hash mismatch.
"""

import argparse
import hashlib
import os
import signal
import sys
import time

import libtorrent as lt

T0 = time.monotonic()
# Without this flag a forced re-announce is held back by the tracker's
# "min interval" (libtorrent clamps it to >= 60 s).
NOW = lt.reannounce_flags_t.ignore_min_interval


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_session(listen):
    return lt.session({
        "listen_interfaces": listen,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Plain TCP only: fewer moving parts on loopback.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        # Seeder and leecher share the loopback address.
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "alert_mask": lt.alert.category_t.all_categories,
        "tracker_completion_timeout": 10,
        "tracker_receive_timeout": 5,
        "peer_connect_timeout": 3,
        "min_reconnect_time": 1,
    })


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1) if path else sys.stderr

    def __call__(self, who, msg):
        self.f.write("%7.3f %-5s %s\n" % (time.monotonic() - T0, who, msg))


def drain(ses, who, log, stats):
    for a in ses.pop_alerts():
        name = type(a).__name__
        # Skip the very chatty per-block / per-piece / stats alerts.
        if name in ("block_finished_alert", "block_downloading_alert",
                    "block_timeout_alert", "piece_finished_alert",
                    "session_stats_alert", "stats_alert",
                    "incoming_request_alert", "picker_log_alert",
                    "block_uploaded_alert"):
            continue
        if name == "tracker_reply_alert":
            stats["replies"] += 1
            stats["peers"] = max(stats["peers"], a.num_peers)
        elif name in ("tracker_error_alert", "scrape_failed_alert",
                      "tracker_warning_alert"):
            stats["errors"].append(a.message())
        log(who, "%s: %s" % (name, a.message()))


def add(ses, torrent, save_path):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_path
    return ses.add_torrent(atp)


def new_stats():
    return {"replies": 0, "peers": 0, "errors": []}


def wait_seeding(ses, h, log, stats, deadline):
    """Wait for the seeder to finish checking and be seeding, then re-announce
    and wait for one tracker reply so the tracker knows it as a seeder."""
    while not h.status().is_seeding:
        if time.monotonic() > deadline:
            return False
        drain(ses, "seed", log, stats)
        time.sleep(0.1)
    log("seed", "seeding; forcing re-announce")
    before = stats["replies"]
    h.force_reannounce(0, -1, NOW)
    while stats["replies"] == before:
        if time.monotonic() > deadline:
            return False
        drain(ses, "seed", log, stats)
        time.sleep(0.1)
    return True


def describe(who, st, stats):
    return ("%s: state=%s progress=%.3f peers=%d seeds=%d tracker_replies=%d "
            "max_tracker_peers=%d tracker_errors=%r"
            % (who, st.state, st.progress, st.num_peers, st.num_seeds,
               stats["replies"], stats["peers"], stats["errors"][-3:]))


def cmd_pair(args, log):
    deadline = time.monotonic() + args.timeout
    seed_dir = os.path.dirname(os.path.abspath(args.data))
    seeder = make_session(args.seed_listen)
    sstats = new_stats()
    sh = add(seeder, args.torrent, seed_dir)
    if not wait_seeding(seeder, sh, log, sstats, deadline):
        print("FAIL: seeder never seeding/announced; " +
              describe("seed", sh.status(), sstats), file=sys.stderr)
        return 1

    leecher = make_session(args.leech_listen)
    lstats = new_stats()
    # The same torrent with another tracker in it: the leecher announces elsewhere (two
    # replicated nodes), and learns of the seeder only through replication.
    lh = add(leecher, args.leech_torrent or args.torrent, args.leech_dir)
    last_kick = time.monotonic()
    while True:
        drain(seeder, "seed", log, sstats)
        drain(leecher, "leech", log, lstats)
        st = lh.status()
        if st.is_seeding:
            break
        now = time.monotonic()
        if now > deadline:
            print("FAIL: timeout; " + describe("leech", st, lstats) + "; " +
                  describe("seed", sh.status(), sstats), file=sys.stderr)
            return 1
        # If no peer connection yet, nudge the leecher (tracker may have
        # answered before it knew the seeder, or the first connect failed).
        if st.num_peers == 0 and now - last_kick > 3:
            log("leech", "no peers; forcing re-announce")
            lh.force_reannounce(0, -1, NOW)
            last_kick = now
        time.sleep(0.1)
    log("leech", "download complete in %.2fs" % (time.monotonic() - T0))

    got = os.path.join(args.leech_dir, lh.torrent_file().name())
    want_h, got_h = sha256(args.data), sha256(got)
    print("seed  sha256 %s\nleech sha256 %s" % (want_h, got_h), file=sys.stderr)
    return 0 if want_h == got_h else 2


def cmd_seed(args, log):
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    deadline = time.monotonic() + args.timeout
    seed_dir = os.path.dirname(os.path.abspath(args.data))
    seeder = make_session(args.seed_listen)
    stats = new_stats()
    h = add(seeder, args.torrent, seed_dir)
    if not wait_seeding(seeder, h, log, stats, deadline):
        print("FAIL: seeder never seeding/announced; " +
              describe("seed", h.status(), stats), file=sys.stderr)
        return 1
    with open(args.ready_file, "w") as f:
        f.write("ready\n")
    while not stop and time.monotonic() < deadline:
        drain(seeder, "seed", log, stats)
        time.sleep(0.2)
    drain(seeder, "seed", log, stats)
    log("seed", describe("seed", h.status(), stats))
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["pair", "seed"])
    p.add_argument("--torrent", required=True)
    p.add_argument("--data", required=True, help="the file being seeded")
    p.add_argument("--seed-listen", required=True,
                   help="libtorrent listen_interfaces, e.g. 127.0.0.1:7000")
    p.add_argument("--leech-listen", help="pair mode: e.g. [::1]:7001")
    p.add_argument("--leech-dir", help="pair mode: download directory")
    p.add_argument("--leech-torrent",
                   help="pair mode: the leecher's .torrent (default: --torrent)")
    p.add_argument("--ready-file", help="seed mode: touched when seeding")
    p.add_argument("--timeout", type=float, default=45)
    p.add_argument("--log", help="alert log file (default stderr)")
    args = p.parse_args()
    log = Log(args.log)
    log("main", "libtorrent %s, mode %s" % (lt.__version__, args.mode))
    if args.mode == "pair":
        if not (args.leech_listen and args.leech_dir):
            p.error("pair needs --leech-listen and --leech-dir")
        return cmd_pair(args, log)
    if not args.ready_file:
        p.error("seed needs --ready-file")
    return cmd_seed(args, log)


if __name__ == "__main__":
    sys.exit(main())

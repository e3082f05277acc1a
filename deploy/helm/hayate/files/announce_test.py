"""`helm test` for hayate: announces over HTTP and UDP as two peers of one torrent and checks
that each protocol's reply lists the other peer. Standard library only.

    HAYATE_HOST=tracker HAYATE_PORT=6969 python3 announce_test.py

Exit 0 if both protocols work; 1 with the reason otherwise. The peers stop at the end.
"""

import os
import random
import socket
import struct
import sys
import urllib.parse
import urllib.request

HOST = os.environ.get("HAYATE_HOST", "127.0.0.1")
PORT = int(os.environ.get("HAYATE_PORT", "6969"))
TIMEOUT = 5
INFO_HASH = bytes(random.getrandbits(8) for _ in range(20))
HTTP_PEER = 50001  # the ports the two test peers claim; nothing listens there
UDP_PEER = 50002


def peer_id():
    return b"-HT0001-" + bytes(random.choice(b"0123456789") for _ in range(12))


def bvalue(data, key):
    """The value after `key` in a bencoded dictionary: an int, or the bytes of a string."""
    token = b"%d:%s" % (len(key), key)
    i = data.find(token)
    if i < 0:
        return None
    i += len(token)
    if data[i:i + 1] == b"i":
        return int(data[i + 1:data.index(b"e", i)])
    n, _, rest = data[i:].partition(b":")
    return rest[:int(n)]


def http_announce(port, event):
    # Every byte percent-encoded, as BitTorrent clients send them (urlencode would turn a
    # 0x20 byte into "+").
    query = "info_hash=%s&peer_id=%s&port=%d&uploaded=0&downloaded=0&left=1000&event=%s&compact=1" % (
        urllib.parse.quote(INFO_HASH, safe=""), urllib.parse.quote(peer_id(), safe=""), port, event)
    host = "[%s]" % HOST if ":" in HOST else HOST
    url = "http://%s:%d/announce?%s" % (host, PORT, query)
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        body = reply.read()
    failure = bvalue(body, b"failure reason")
    if failure is not None:
        raise AssertionError("HTTP announce refused: %r" % failure)
    if bvalue(body, b"interval") is None:
        raise AssertionError("HTTP reply without interval: %r" % body[:200])
    return [struct.unpack(">H", p[4:6])[0] for p in chunks(bvalue(body, b"peers") or b"", 6)]


def chunks(data, size):
    return [data[i:i + size] for i in range(0, len(data) - len(data) % size, size)]


def udp_announce(port, event):
    family = socket.AF_INET6 if ":" in HOST else socket.AF_INET
    addr = socket.getaddrinfo(HOST, PORT, family, socket.SOCK_DGRAM)[0][4]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        tid = random.getrandbits(32)
        s.sendto(struct.pack(">QII", 0x41727101980, 0, tid), addr)
        action, got_tid, connection_id = struct.unpack(">IIQ", s.recv(2048)[:16])
        if (action, got_tid) != (0, tid):
            raise AssertionError("UDP connect: action %d, transaction %d" % (action, got_tid))
        events = {"started": 2, "stopped": 3}
        tid = random.getrandbits(32)
        s.sendto(struct.pack(">QII20s20sQQQIIIiH", connection_id, 1, tid, INFO_HASH, peer_id(),
                             0, 1000, 0, events[event], 0, 0, 50, port), addr)
        reply = s.recv(2048)
    action, got_tid = struct.unpack(">II", reply[:8])
    if action != 1 or got_tid != tid:
        raise AssertionError("UDP announce: action %d (%r)" % (action, reply[8:100]))
    size = 18 if family == socket.AF_INET6 else 6
    return [struct.unpack(">H", p[-2:])[0] for p in chunks(reply[20:], size)]


def main():
    try:
        http_announce(HTTP_PEER, "started")
        udp_peers = udp_announce(UDP_PEER, "started")
        if HTTP_PEER not in udp_peers:
            raise AssertionError("UDP reply lacks the HTTP peer: ports %r" % udp_peers)
        http_peers = http_announce(HTTP_PEER, "started")
        if UDP_PEER not in http_peers:
            raise AssertionError("HTTP reply lacks the UDP peer: ports %r" % http_peers)
        udp_announce(UDP_PEER, "stopped")
        http_announce(HTTP_PEER, "stopped")
    except (AssertionError, OSError) as e:
        print("FAIL %s:%d: %s" % (HOST, PORT, e))
        return 1
    print("PASS %s:%d: HTTP and UDP announces each list the other protocol's peer" % (HOST, PORT))
    return 0


if __name__ == "__main__":
    sys.exit(main())

//! `/metrics`, `/healthz` and `/readyz` after known traffic, on every engine: the counts add up
//! across workers, and promtool accepts the text.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use hayate::config::Config;

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let raw = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes(),
    );
    let reply = parse_http_replies(&raw).remove(0);
    (reply.status, String::from_utf8(reply.body).unwrap())
}

/// `name{labels}` -> value, for every sample line.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(key, _)| {
            key.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_count_known_traffic_and_pass_promtool() {
    for engine in engines() {
        let hooks = Config::from_yaml(
            "prehooks:\n  - name: client_approval\n    options:\n      deny: [\"-BAD\"]\n",
        )
        .unwrap();
        let config = Config {
            prehooks: hooks.prehooks,
            ..test_config(engine)
        };
        let t = TestServer::start(config);
        let metrics = t.server.metrics_addr().expect("metrics listener");

        assert_eq!(get(metrics, "/healthz").0, 200);
        assert_eq!(get(metrics, "/readyz").0, 200);
        assert_eq!(get(metrics, "/nothing").0, 404);

        // UDP over IPv4: 3 connects, 2 announces, 1 scrape, 1 bad connection id.
        let c = UdpClient::new(t.udp(false));
        let id = c.connect();
        c.connect();
        c.connect();
        c.request(&UdpAnnounce::new(id, hash(1), 1).packet());
        c.request(&UdpAnnounce::new(id, hash(1), 2).packet());
        c.request(&scrape_packet(id, 1, &[hash(1)]));
        c.request(&UdpAnnounce::new(0xbad, hash(1), 3).packet());
        // UDP over IPv6: 1 connect, 1 announce refused by the hook.
        let c6 = UdpClient::new(t.udp(true));
        let mut refused = UdpAnnounce::new(c6.connect(), hash(1), 4);
        refused.peer_id = *b"-BAD001-000000000000";
        c6.request(&refused.packet());
        // HTTP: 2 announces over IPv6, 1 bad request over IPv4, 1 unknown path.
        http_get(t.http(true), &announce_target(hash(2), 1, 1, 0, ""));
        http_get(t.http(true), &announce_target(hash(2), 2, 2, 5, ""));
        http_get(t.http(false), "/announce?info_hash=short");
        http_get(t.http(false), "/favicon.ico");

        let (status, text) = get(metrics, "/metrics");
        assert_eq!(status, 200);
        let s = samples(&text);
        let e = if engine == hayate::config::EngineKind::IoUring {
            "io_uring"
        } else {
            "epoll"
        };
        let req = |p, a, ip| {
            value(
                &s,
                "hayate_requests_total",
                &[("protocol", p), ("action", a), ("ip", ip), ("engine", e)],
            )
        };
        let resp = |p, a, ip| {
            value(
                &s,
                "hayate_responses_total",
                &[("protocol", p), ("action", a), ("ip", ip), ("engine", e)],
            )
        };
        assert_eq!(req("udp", "connect", "ipv4"), 3.0, "{engine:?}");
        assert_eq!(req("udp", "announce", "ipv4"), 3.0);
        assert_eq!(req("udp", "scrape", "ipv4"), 1.0);
        assert_eq!(resp("udp", "announce", "ipv4"), 2.0);
        assert_eq!(resp("udp", "error", "ipv4"), 1.0);
        assert_eq!(req("udp", "connect", "ipv6"), 1.0);
        assert_eq!(resp("udp", "error", "ipv6"), 1.0);
        assert_eq!(req("http", "announce", "ipv6"), 2.0);
        assert_eq!(resp("http", "announce", "ipv6"), 2.0);
        assert_eq!(req("http", "announce", "ipv4"), 1.0);
        assert_eq!(resp("http", "error", "ipv4"), 1.0);
        assert_eq!(req("http", "other", "ipv4"), 1.0);
        let err = |p, k| value(&s, "hayate_errors_total", &[("protocol", p), ("kind", k)]);
        assert_eq!(err("udp", "bad_connection_id"), 1.0);
        assert_eq!(err("udp", "rejected_by_hook"), 1.0);
        assert_eq!(err("http", "bad_request"), 1.0);
        assert_eq!(
            value(
                &s,
                "hayate_hook_rejections_total",
                &[("hook", "client_approval")]
            ),
            1.0
        );
        assert_eq!(value(&s, "hayate_torrents", &[]), 2.0);
        // Two UDP leechers on hash 1; an HTTP seeder and leecher on hash 2.
        assert_eq!(value(&s, "hayate_seeders", &[]), 1.0);
        assert_eq!(value(&s, "hayate_leechers", &[]), 3.0);
        assert_eq!(value(&s, "hayate_peers", &[]), 4.0);
        assert_eq!(value(&s, "hayate_engine_info", &[("engine", e)]), 1.0);
        assert_eq!(value(&s, "hayate_workers", &[]), 2.0);
        // 16 requests so far, one in 16 timed per worker: the histogram's count is what was sampled.
        let sampled = value(&s, "hayate_request_duration_seconds_count", &[]);
        assert!(sampled <= 16.0 / 16.0 * 2.0, "{sampled}");
        assert!(value(&s, "process_resident_memory_bytes", &[]) > 1e6);
        assert!(value(&s, "process_open_fds", &[]) > 0.0);
        assert!(text.contains("process_cpu_seconds_total"));

        t.server.store().clean();
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus) must be installed");
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn readyz_fails_once_the_server_stops() {
    let t = TestServer::start(test_config(engines()[0]));
    let metrics = t.server.metrics_addr().unwrap();
    let shared = t.server.metrics().clone();
    assert_eq!(get(metrics, "/readyz").0, 200);
    t.server.stop();
    assert!(!shared.is_ready());
    assert_eq!(get(metrics, "/readyz").0, 503);
    assert_eq!(get(metrics, "/healthz").0, 200);
}

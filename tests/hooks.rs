//! The hooks, configured in YAML as an operator would, over HTTP and UDP, IPv4 and IPv6, on
//! every engine: what they allow passes, what they refuse gets the reason, reloads take effect.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hayate::config::Config;

fn with_hooks(engine: hayate::config::EngineKind, yaml: &str) -> Config {
    let hooks = Config::from_yaml(yaml).expect("valid hook config");
    Config {
        prehooks: hooks.prehooks,
        posthooks: hooks.posthooks,
        ..test_config(engine)
    }
}

/// The failure reason of an announce over HTTP, or None if it was served.
fn http_announce(
    t: &TestServer,
    ipv6: bool,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
) -> Option<String> {
    let target = format!(
        "/announce?info_hash={}&peer_id={}&port=6881&left=0",
        urlencode(&info_hash),
        urlencode(&peer_id)
    );
    http_get(t.http(ipv6), &target).failure()
}

/// The error message of an announce over UDP, or None if it was served.
fn udp_announce(
    t: &TestServer,
    ipv6: bool,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
) -> Option<String> {
    let c = UdpClient::new(t.udp(ipv6));
    let mut a = UdpAnnounce::new(c.connect(), info_hash, 6881);
    a.peer_id = peer_id;
    match c.request(&a.packet()) {
        UdpReply::Announce { .. } => None,
        UdpReply::Error { message, .. } => Some(message),
        other => panic!("{other:?}"),
    }
}

fn every_way(t: &TestServer, info_hash: [u8; 20], peer_id: [u8; 20]) -> Vec<Option<String>> {
    let mut results = Vec::new();
    for ipv6 in [false, true] {
        results.push(http_announce(t, ipv6, info_hash, peer_id));
        results.push(udp_announce(t, ipv6, info_hash, peer_id));
    }
    results
}

fn id(prefix: &[u8]) -> [u8; 20] {
    let mut id = [b'x'; 20];
    id[..prefix.len()].copy_from_slice(prefix);
    id
}

#[test]
fn client_approval_allows_and_denies_by_peer_id_prefix() {
    for engine in engines() {
        let allow = TestServer::start(with_hooks(
            engine,
            "prehooks:\n  - name: client_approval\n    options:\n      allow: [\"-qB4650-\", \"-TR300\"]\n",
        ));
        for peer in [id(b"-qB4650-"), id(b"-TR3000-")] {
            assert!(
                every_way(&allow, hash(1), peer).iter().all(Option::is_none),
                "{engine:?}"
            );
        }
        for result in every_way(&allow, hash(1), id(b"-UT3500-")) {
            assert_eq!(result.as_deref(), Some("client not approved"), "{engine:?}");
        }
        let deny = TestServer::start(with_hooks(
            engine,
            "prehooks:\n  - name: client_approval\n    options:\n      deny: [\"-UT\"]\n",
        ));
        assert!(
            every_way(&deny, hash(1), id(b"-qB4650-"))
                .iter()
                .all(Option::is_none)
        );
        assert!(
            every_way(&deny, hash(1), id(b"-UT3500-"))
                .iter()
                .all(|r| r.as_deref() == Some("client not approved"))
        );
    }
}

#[test]
fn torrent_approval_from_a_file_reloads_on_change_and_on_reload_and_keeps_the_old_list_on_error() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("torrents.txt");
        let hex = |n: u8| format!("{n:02x}").repeat(20);
        std::fs::write(&list, format!("# approved\n{}\n", hex(1))).unwrap();
        let t = TestServer::start(with_hooks(
            engine,
            &format!(
                "prehooks:\n  - name: torrent_approval\n    options:\n      mode: allow\n      file: {}\n      check_interval_secs: 1\n",
                list.display()
            ),
        ));
        assert!(
            every_way(&t, hash(1), peer_id(1))
                .iter()
                .all(Option::is_none)
        );
        assert!(
            every_way(&t, hash(2), peer_id(1))
                .iter()
                .all(|r| r.as_deref() == Some("torrent not approved"))
        );

        // The file changes: within a few seconds the new list is in force, with no restart.
        std::fs::write(&list, format!("{}\n{}\n", hex(1), hex(2))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_announce(&t, false, hash(2), peer_id(1)).is_some() {
            assert!(
                Instant::now() < deadline,
                "{engine:?}: the change was not picked up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            every_way(&t, hash(2), peer_id(1))
                .iter()
                .all(Option::is_none)
        );

        // A broken file keeps the old list, even on an explicit reload (what SIGHUP does).
        std::fs::write(&list, "not a hash\n").unwrap();
        t.server.tracker().middleware.reload();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            every_way(&t, hash(2), peer_id(1))
                .iter()
                .all(Option::is_none)
        );

        // An explicit reload of a good file.
        std::fs::write(&list, format!("{}\n", hex(3))).unwrap();
        t.server.tracker().middleware.reload();
        assert!(http_announce(&t, true, hash(3), peer_id(1)).is_none());
        assert_eq!(
            udp_announce(&t, false, hash(1), peer_id(1)).as_deref(),
            Some("torrent not approved")
        );

        // Scrape answers for approved torrents only.
        let target = format!(
            "/scrape?info_hash={}&info_hash={}",
            urlencode(&hash(1)),
            urlencode(&hash(3))
        );
        let files = http_get(t.http(false), &target).dict().dict("files");
        assert_eq!(files.0.len(), 1);
    }
}

#[test]
fn torrent_approval_deny_mode_with_inline_hashes() {
    for engine in engines() {
        let t = TestServer::start(with_hooks(
            engine,
            &format!(
                "prehooks:\n  - name: torrent_approval\n    options:\n      mode: deny\n      hashes: [\"{}\"]\n",
                "07".repeat(20)
            ),
        ));
        assert!(
            every_way(&t, hash(7), peer_id(1))
                .iter()
                .all(|r| r.as_deref() == Some("torrent not approved"))
        );
        assert!(
            every_way(&t, hash(8), peer_id(1))
                .iter()
                .all(Option::is_none)
        );
    }
}

#[test]
fn interval_variation_adds_a_bounded_random_delay() {
    for engine in engines() {
        let t = TestServer::start(with_hooks(
            engine,
            "posthooks:\n  - name: interval_variation\n    options:\n      modify_response_probability: 1.0\n      max_increase_delta: 10\n      modify_min_interval: true\n",
        ));
        let mut seen = std::collections::HashSet::new();
        for i in 0..40 {
            let d = http_get(t.http(i % 2 == 0), &announce_target(hash(1), 1, 1, 0, "")).dict();
            let delta = d.int("interval") - 1800;
            assert!((1..=10).contains(&delta), "{engine:?}: {delta}");
            assert_eq!(d.int("min interval") - 900, delta);
            seen.insert(delta);
        }
        assert!(seen.len() > 3, "the delay varies: {seen:?}");
        let c = UdpClient::new(t.udp(true));
        let UdpReply::Announce { interval, .. } =
            c.request(&UdpAnnounce::new(c.connect(), hash(1), 2).packet())
        else {
            panic!()
        };
        assert!((1801..=1810).contains(&interval));
    }
}

#[test]
fn with_probability_zero_nothing_changes() {
    let t = TestServer::start(with_hooks(
        engines()[0],
        "posthooks:\n  - name: interval_variation\n    options:\n      modify_response_probability: 0.0\n",
    ));
    for _ in 0..20 {
        assert_eq!(
            http_get(t.http(false), &announce_target(hash(1), 1, 1, 0, ""))
                .dict()
                .int("interval"),
            1800
        );
    }
}

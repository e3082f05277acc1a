use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex as StdMutex;

use super::*;
use crate::bittorrent::PeerId;

const NOW: u32 = 1_800_000_000;

fn store_with(limits: SwarmLimits) -> SwarmStore {
    SwarmStore::new(4, limits, Clock::stopped(NOW))
}

fn store() -> SwarmStore {
    store_with(SwarmLimits {
        max_torrents: 100,
        max_peers_per_torrent: 100,
        peer_lifetime_secs: 60,
    })
}

fn request(ip: &str, port: u16, left: u64, event: AnnounceEvent) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: InfoHash([1; 20]),
        peer_id: PeerId([port as u8; 20]),
        peer_ip: ip.parse().unwrap(),
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        numwant: None,
        key: None,
    }
}

fn announce(store: &SwarmStore, req: &AnnounceRequest, numwant: usize) -> AnnounceResponse {
    let mut response = AnnounceResponse::default();
    store
        .announce(req, numwant, true, &mut response)
        .expect("announce accepted");
    response
}

#[test]
fn counts_include_the_announcing_peer_and_left_zero_makes_a_seeder() {
    let s = store();
    let r = announce(&s, &request("10.0.0.1", 1, 0, AnnounceEvent::Started), 50);
    assert_eq!((r.complete, r.incomplete), (1, 0));
    assert!(r.peers.is_empty(), "the announcing peer is never listed");
    let r = announce(&s, &request("10.0.0.2", 2, 100, AnnounceEvent::Started), 50);
    assert_eq!((r.complete, r.incomplete), (1, 1));
    assert_eq!(r.peers.len(), 1);
    assert_eq!(r.peers[0].addr, "10.0.0.1:1".parse().unwrap());
    // The leecher finishes: it becomes a seeder, and the counts follow.
    let r = announce(&s, &request("10.0.0.2", 2, 0, AnnounceEvent::Completed), 50);
    assert_eq!((r.complete, r.incomplete), (2, 0));
}

#[test]
fn the_same_ip_with_another_port_is_another_peer() {
    let s = store();
    announce(&s, &request("10.0.0.1", 1, 5, AnnounceEvent::None), 50);
    let r = announce(&s, &request("10.0.0.1", 2, 5, AnnounceEvent::None), 50);
    assert_eq!(r.incomplete, 2);
    assert_eq!(r.peers.len(), 1);
}

#[test]
fn stopped_removes_the_peer() {
    let s = store();
    announce(&s, &request("10.0.0.1", 1, 5, AnnounceEvent::Started), 50);
    announce(&s, &request("10.0.0.2", 2, 5, AnnounceEvent::Started), 50);
    let r = announce(&s, &request("10.0.0.1", 1, 5, AnnounceEvent::Stopped), 50);
    assert_eq!((r.complete, r.incomplete), (0, 1));
    assert!(r.peers.is_empty());
    assert!(!s.contains_peer(&InfoHash([1; 20]), "10.0.0.1".parse().unwrap(), 1));
}

#[test]
fn completed_counts_once_per_peer() {
    let s = store();
    for _ in 0..3 {
        announce(&s, &request("10.0.0.1", 1, 0, AnnounceEvent::Completed), 50);
    }
    announce(&s, &request("10.0.0.2", 2, 0, AnnounceEvent::Completed), 50);
    assert_eq!(s.scrape(&InfoHash([1; 20])).downloaded, 2);
}

#[test]
fn numwant_bounds_the_peers_and_they_come_from_a_random_window() {
    let s = store();
    for i in 1..=40u16 {
        announce(
            &s,
            &request(&format!("10.0.1.{i}"), i, 5, AnnounceEvent::None),
            50,
        );
    }
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let r = announce(&s, &request("10.0.9.9", 999, 5, AnnounceEvent::None), 10);
        assert_eq!(r.peers.len(), 10);
        assert!(r.peers.iter().all(|p| p.addr.port() != 999));
        let distinct: HashSet<_> = r.peers.iter().map(|p| p.addr).collect();
        assert_eq!(distinct.len(), 10, "no peer twice in one response");
        seen.extend(distinct);
    }
    assert!(
        seen.len() > 20,
        "responses should vary, saw {} peers",
        seen.len()
    );
}

#[test]
fn ipv4_and_ipv6_peers_are_apart_and_own_family_comes_first() {
    let s = store();
    announce(&s, &request("10.0.0.1", 1, 5, AnnounceEvent::None), 50);
    announce(&s, &request("::5", 5, 0, AnnounceEvent::None), 50);
    let mut response = AnnounceResponse::default();
    s.announce(
        &request("::6", 6, 5, AnnounceEvent::None),
        50,
        true,
        &mut response,
    )
    .unwrap();
    assert_eq!((response.complete, response.incomplete), (1, 2));
    let ips: Vec<IpAddr> = response.peers.iter().map(|p| p.addr.ip()).collect();
    assert_eq!(
        ips,
        vec![
            "::5".parse::<IpAddr>().unwrap(),
            "10.0.0.1".parse().unwrap()
        ]
    );
    // One family only (the UDP case).
    s.announce(
        &request("::6", 6, 5, AnnounceEvent::None),
        50,
        false,
        &mut response,
    )
    .unwrap();
    assert!(response.peers.iter().all(|p| p.addr.is_ipv6()));
}

#[test]
fn expired_peers_and_empty_torrents_are_cleaned() {
    let s = store();
    announce(&s, &request("10.0.0.1", 1, 5, AnnounceEvent::None), 50);
    s.clock().advance(30);
    announce(&s, &request("10.0.0.2", 2, 0, AnnounceEvent::None), 50);
    s.clock().advance(31); // peer 1 is now 61 s old, peer 2 31 s.
    let report = s.clean();
    assert_eq!((report.peers_removed, report.torrents_removed), (1, 0));
    assert_eq!(
        s.totals(),
        StoreTotals {
            torrents: 1,
            seeders: 1,
            leechers: 0
        }
    );
    s.clock().advance(30);
    let report = s.clean();
    assert_eq!((report.peers_removed, report.torrents_removed), (1, 1));
    assert_eq!(s.totals(), StoreTotals::default());
}

#[test]
fn limits_refuse_new_torrents_and_peers_with_a_reason() {
    let s = store_with(SwarmLimits {
        max_torrents: 1,
        max_peers_per_torrent: 2,
        peer_lifetime_secs: 60,
    });
    announce(&s, &request("10.0.0.1", 1, 5, AnnounceEvent::None), 50);
    announce(&s, &request("10.0.0.2", 2, 5, AnnounceEvent::None), 50);
    let mut response = AnnounceResponse::default();
    let err = s.announce(
        &request("10.0.0.3", 3, 5, AnnounceEvent::None),
        50,
        true,
        &mut response,
    );
    assert_eq!(err, Err(TORRENT_FULL));
    // A known peer still re-announces.
    announce(&s, &request("10.0.0.2", 2, 0, AnnounceEvent::None), 50);
    let mut other = request("10.0.0.1", 1, 5, AnnounceEvent::None);
    other.info_hash = InfoHash([2; 20]);
    assert_eq!(
        s.announce(&other, 50, true, &mut response),
        Err(TRACKER_FULL)
    );
    assert_eq!(s.totals().torrents, 1);
}

#[derive(Default)]
struct Recorder(StdMutex<Vec<String>>);

impl SwarmObserver for Recorder {
    fn announced(&self, _: &InfoHash, peer: SocketAddr, _: &PeerId, seeder: bool, _: u32) {
        self.0
            .lock()
            .unwrap()
            .push(format!("announced {peer} {seeder}"));
    }
    fn removed(&self, _: &InfoHash, peer: SocketAddr) {
        self.0.lock().unwrap().push(format!("removed {peer}"));
    }
}

#[test]
fn an_observer_sees_announces_and_stops() {
    let recorder = Arc::new(Recorder::default());
    let s = store().with_observer(recorder.clone());
    announce(&s, &request("10.0.0.1", 1, 0, AnnounceEvent::Started), 50);
    announce(&s, &request("10.0.0.1", 1, 0, AnnounceEvent::Stopped), 50);
    assert_eq!(
        *recorder.0.lock().unwrap(),
        vec!["announced 10.0.0.1:1 true", "removed 10.0.0.1:1"]
    );
}

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
        .announce(req, numwant, PeerSelection::ALL, &mut response)
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

/// A large swarm's window is derived from the announcing peer and the second (so that it can
/// be prefetched), not drawn: peers still get windows of their own, and a peer a new one
/// each second.
#[test]
fn large_swarm_windows_differ_between_peers_and_seconds() {
    let s = roomy_store();
    let hash = nth(false, 0, 5, AnnounceEvent::None).info_hash;
    for i in 0..300 {
        announce(&s, &nth(false, i, 5, AnnounceEvent::None), 0);
    }
    assert!(is_large(&s, &hash, false));
    let first_peer = |i: usize| {
        let r = announce(&s, &nth(false, i, 5, AnnounceEvent::None), 10);
        assert_eq!(r.peers.len(), 10);
        r.peers[0].addr
    };
    let between_peers: HashSet<_> = (0..50).map(first_peer).collect();
    assert!(between_peers.len() > 25, "{} windows", between_peers.len());
    let between_seconds: HashSet<_> = (0..50)
        .map(|_| {
            s.clock().advance(1);
            first_peer(7)
        })
        .collect();
    assert!(
        between_seconds.len() > 25,
        "{} windows",
        between_seconds.len()
    );
}

/// Replies that carry no peer ids get none, in small and large swarms alike (a large swarm
/// keeps them apart and does not read them then).
#[test]
fn peer_ids_are_given_only_when_the_reply_carries_them() {
    for peers in [40u16, 200] {
        let s = store_with(SwarmLimits {
            max_torrents: 1,
            max_peers_per_torrent: 1000,
            peer_lifetime_secs: 60,
        });
        for i in 1..=peers {
            let ip = format!("10.0.{}.{}", i / 200, i % 200 + 1);
            announce(&s, &request(&ip, i, 5, AnnounceEvent::None), 0);
        }
        for peer_ids in [true, false] {
            let mut response = AnnounceResponse::default();
            let selection = PeerSelection {
                both_families: false,
                peer_ids,
            };
            let req = request("10.9.9.9", 999, 5, AnnounceEvent::None);
            s.announce(&req, 30, selection, &mut response).unwrap();
            assert_eq!(response.peers.len(), 30);
            for p in &response.peers {
                let id = if peer_ids { p.addr.port() as u8 } else { 0 };
                assert_eq!(p.peer_id, PeerId([id; 20]), "{peers} peers, {p:?}");
            }
        }
    }
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
        PeerSelection::ALL,
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
        PeerSelection::default(),
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
        PeerSelection::ALL,
        &mut response,
    );
    assert_eq!(err, Err(TORRENT_FULL));
    // A known peer still re-announces.
    announce(&s, &request("10.0.0.2", 2, 0, AnnounceEvent::None), 50);
    let mut other = request("10.0.0.1", 1, 5, AnnounceEvent::None);
    other.info_hash = InfoHash([2; 20]);
    assert_eq!(
        s.announce(&other, 50, PeerSelection::ALL, &mut response),
        Err(TRACKER_FULL)
    );
    assert_eq!(s.totals().torrents, 1);
}

#[derive(Default)]
struct Recorder(StdMutex<Vec<String>>);

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl SwarmObserver for Recorder {
    fn announced(&self, _: &InfoHash, peer: SocketAddr, _: &PeerId, seeder: bool, done: bool) {
        self.0
            .lock()
            .unwrap()
            .push(format!("announced {peer} {seeder} {done}"));
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
    // A stop of a peer that is not stored changes nothing anywhere.
    announce(&s, &request("10.0.0.9", 1, 0, AnnounceEvent::Stopped), 50);
    assert_eq!(
        recorder.take(),
        vec!["announced 10.0.0.1:1 true false", "removed 10.0.0.1:1"]
    );
}

#[test]
fn the_observer_hears_of_changes_and_of_one_refresh_per_epoch_not_of_every_announce() {
    let recorder = Arc::new(Recorder::default());
    let s = store().with_observer(recorder.clone());
    let clock = s.clock().clone();
    // Start at the beginning of an epoch.
    clock.set(NOW - NOW % s.refresh_secs());
    let leecher = request("10.0.0.1", 1, 10, AnnounceEvent::None);
    let seeder = request("10.0.0.1", 1, 0, AnnounceEvent::None);
    let completed = request("10.0.0.1", 1, 0, AnnounceEvent::Completed);
    announce(&s, &leecher, 50);
    announce(&s, &leecher, 50);
    clock.advance(s.refresh_secs() - 1);
    announce(&s, &leecher, 50);
    assert_eq!(recorder.take(), ["announced 10.0.0.1:1 false false"]);
    announce(&s, &completed, 50);
    announce(&s, &completed, 50);
    announce(&s, &seeder, 50);
    assert_eq!(recorder.take(), ["announced 10.0.0.1:1 true true"]);
    // The next epoch: one refresh, so other nodes keep their copy.
    clock.advance(1);
    announce(&s, &seeder, 50);
    announce(&s, &seeder, 50);
    assert_eq!(recorder.take(), ["announced 10.0.0.1:1 true false"]);
    announce(&s, &leecher, 50);
    assert_eq!(recorder.take(), ["announced 10.0.0.1:1 false false"]);
    // Another node's copy lives longer than the peer here, wherever it announced last.
    assert!(s.remote_lifetime_secs() >= 60 + s.refresh_secs());
}

#[test]
fn changes_from_other_nodes_are_stored_but_never_told_and_become_local_when_announced_here() {
    let recorder = Arc::new(Recorder::default());
    let s = store().with_observer(recorder.clone());
    let hash = InfoHash([1; 20]);
    let remote: SocketAddr = "10.0.0.2:2".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::2]:2".parse().unwrap();
    s.apply_remote(&hash, remote, PeerId([2; 20]), false, true, NOW + 100)
        .unwrap();
    s.apply_remote(&hash, v6, PeerId([3; 20]), true, false, NOW + 100)
        .unwrap();
    assert!(s.contains_peer(&hash, remote.ip(), 2));
    assert_eq!(s.scrape(&hash).downloaded, 1);
    // The same completion again (a refresh that repeats it) is not counted twice.
    s.apply_remote(&hash, remote, PeerId([2; 20]), false, true, NOW + 100)
        .unwrap();
    assert_eq!(s.scrape(&hash).downloaded, 1);
    assert_eq!(
        (s.scrape(&hash).complete, s.scrape(&hash).incomplete),
        (1, 1)
    );
    // Not published again (no loops), and not among the peers this node republishes.
    let local = request("10.0.0.1", 1, 0, AnnounceEvent::None);
    announce(&s, &local, 50);
    assert_eq!(recorder.take(), ["announced 10.0.0.1:1 true false"]);
    let mut republished = Vec::new();
    s.for_each_local_peer(|_, peer, _, _| republished.push(peer));
    assert_eq!(republished, ["10.0.0.1:1".parse::<SocketAddr>().unwrap()]);
    // The remote peer announces here: now this node tells the others.
    announce(&s, &request("10.0.0.2", 2, 10, AnnounceEvent::None), 50);
    assert_eq!(recorder.take(), ["announced 10.0.0.2:2 false false"]);
    // Removals from other nodes remove, and a torrent left empty goes.
    assert!(s.apply_remote_removal(&hash, v6));
    assert!(!s.apply_remote_removal(&hash, v6));
    assert!(s.apply_remote_removal(&hash, remote));
    assert!(s.apply_remote_removal(&hash, "10.0.0.1:1".parse().unwrap()));
    assert_eq!(s.totals().torrents, 0);
    assert!(recorder.take().is_empty());
}

/// Whether the torrent's peers of one family are kept indexed (rather than as a short list).
fn is_large(s: &SwarmStore, info_hash: &InfoHash, v6: bool) -> bool {
    let key = s.key(info_hash);
    let shard = s.lock(&key);
    let torrent = shard.get(&key).expect("stored");
    if v6 {
        torrent.v6.as_ref().is_some_and(|v6| v6.peers.is_large())
    } else {
        torrent.v4.is_large()
    }
}

fn host(v6: bool, i: usize) -> String {
    if v6 {
        format!("2001:db8::{:x}", i + 1)
    } else {
        format!("10.1.{}.{}", i / 200, i % 200 + 1)
    }
}

/// Peer `i` of a family announces with a peer id of its own.
fn nth(v6: bool, i: usize, left: u64, event: AnnounceEvent) -> AnnounceRequest {
    let mut req = request(&host(v6, i), 1000 + i as u16, left, event);
    req.peer_id = PeerId([i as u8 ^ u8::from(v6) << 7; 20]);
    req
}

fn roomy_store() -> SwarmStore {
    store_with(SwarmLimits {
        max_torrents: 10,
        max_peers_per_torrent: 10_000,
        peer_lifetime_secs: 60,
    })
}

/// Every listed peer is another stored peer, listed once, with the id it announced.
fn assert_peers_valid(s: &SwarmStore, req: &AnnounceRequest, response: &AnnounceResponse) {
    let own = SocketAddr::new(req.peer_ip, req.port);
    let mut seen = HashSet::new();
    for peer in &response.peers {
        assert_ne!(peer.addr, own, "the announcing peer is never listed");
        assert!(seen.insert(peer.addr), "{} listed twice", peer.addr);
        assert!(s.contains_peer(&req.info_hash, peer.addr.ip(), peer.addr.port()));
        let i = usize::from(peer.addr.port() - 1000);
        assert_eq!(
            peer.peer_id,
            PeerId([i as u8 ^ u8::from(peer.addr.is_ipv6()) << 7; 20])
        );
    }
}

#[test]
fn a_swarm_grows_into_an_index_and_shrinks_back_into_a_list_in_both_families() {
    for v6 in [false, true] {
        let s = roomy_store();
        let hash = InfoHash([1; 20]);
        let n = peer_map::SMALL_MAX + 40;
        for i in 0..n {
            let req = nth(v6, i, (i % 3) as u64, AnnounceEvent::Started);
            let r = announce(&s, &req, 200);
            // Everyone else, with numwant above the swarm; a seeder (left 0) only the leechers.
            let expected = if i % 3 == 0 {
                (0..i).filter(|j| j % 3 != 0).count()
            } else {
                i
            };
            assert_eq!(r.peers.len(), expected);
            assert_peers_valid(&s, &req, &r);
            assert_eq!(is_large(&s, &hash, v6), i + 1 > peer_map::SMALL_MAX);
        }
        let seeders = (0..n).filter(|i| i % 3 == 0).count() as u32;
        let stats = s.scrape(&hash);
        assert_eq!(
            (stats.complete, stats.incomplete),
            (seeders, n as u32 - seeders)
        );
        // Re-announces find their entries through the index, and the ids come back.
        for i in (0..n).step_by(7) {
            let req = nth(v6, i, 1, AnnounceEvent::None);
            let r = announce(&s, &req, 30);
            assert_eq!(r.peers.len(), 30);
            assert_peers_valid(&s, &req, &r);
        }
        // Leaving, from the front, the back and the middle, down to the list again.
        let mut left: Vec<usize> = (0..n).collect();
        while left.len() > 3 {
            let i = left.remove((left.len() * 5 / 7) % left.len());
            let r = announce(&s, &nth(v6, i, 1, AnnounceEvent::Stopped), 50);
            assert_eq!(r.complete + r.incomplete, left.len() as u32);
            assert!(!s.contains_peer(&hash, host(v6, i).parse().unwrap(), 1000 + i as u16));
            assert_eq!(
                is_large(&s, &hash, v6),
                left.len() > peer_map::SMALL_AGAIN,
                "{} peers left",
                left.len()
            );
            for &j in &left {
                assert!(s.contains_peer(&hash, host(v6, j).parse().unwrap(), 1000 + j as u16));
            }
        }
        // And it grows again.
        for i in n..n + peer_map::SMALL_MAX {
            announce(&s, &nth(v6, i, 1, AnnounceEvent::None), 50);
        }
        assert!(is_large(&s, &hash, v6));
        assert_eq!(
            s.totals().leechers + s.totals().seeders,
            3 + peer_map::SMALL_MAX as u64
        );
    }
}

#[test]
fn expiry_in_an_indexed_swarm_keeps_the_index_and_goes_back_to_a_list() {
    for v6 in [false, true] {
        let s = roomy_store();
        let hash = InfoHash([1; 20]);
        for i in 0..100 {
            announce(&s, &nth(v6, i, 0, AnnounceEvent::None), 0);
        }
        s.clock().advance(30);
        for i in 100..200 {
            announce(&s, &nth(v6, i, 5, AnnounceEvent::None), 0);
        }
        s.clock().advance(31);
        let report = s.clean();
        assert_eq!((report.peers_removed, report.torrents_removed), (100, 0));
        assert!(is_large(&s, &hash, v6));
        let stats = s.scrape(&hash);
        assert_eq!((stats.complete, stats.incomplete), (0, 100));
        for i in 0..200 {
            let ip = host(v6, i).parse().unwrap();
            assert_eq!(s.contains_peer(&hash, ip, 1000 + i as u16), i >= 100);
        }
        // Ten of the rest re-announce in time; after the others expire it is a list again.
        s.clock().advance(20);
        for i in 150..160 {
            announce(&s, &nth(v6, i, 0, AnnounceEvent::None), 0);
        }
        s.clock().advance(20);
        assert_eq!(s.clean().peers_removed, 90);
        assert!(!is_large(&s, &hash, v6));
        let req = nth(v6, 150, 5, AnnounceEvent::None);
        let r = announce(&s, &req, 50);
        assert_eq!((r.complete, r.incomplete, r.peers.len()), (9, 1, 9));
        assert_peers_valid(&s, &req, &r);
        s.clock().advance(61);
        let report = s.clean();
        assert_eq!((report.peers_removed, report.torrents_removed), (10, 1));
        assert_eq!(s.totals(), StoreTotals::default());
    }
}

#[test]
fn completed_counts_once_per_peer_whichever_representation_holds_it() {
    let s = roomy_store();
    let hash = InfoHash([1; 20]);
    announce(&s, &nth(false, 0, 0, AnnounceEvent::Completed), 0);
    for i in 1..=peer_map::SMALL_MAX + 1 {
        announce(&s, &nth(false, i, 5, AnnounceEvent::None), 0);
    }
    assert!(is_large(&s, &hash, false));
    announce(&s, &nth(false, 0, 0, AnnounceEvent::Completed), 0);
    announce(&s, &nth(false, 1, 0, AnnounceEvent::Completed), 0);
    assert_eq!(s.scrape(&hash).downloaded, 2);
    for i in 2..=peer_map::SMALL_MAX + 1 {
        announce(&s, &nth(false, i, 5, AnnounceEvent::Stopped), 0);
    }
    assert!(!is_large(&s, &hash, false));
    announce(&s, &nth(false, 0, 0, AnnounceEvent::Completed), 0);
    announce(&s, &nth(false, 1, 0, AnnounceEvent::Completed), 0);
    let stats = s.scrape(&hash);
    assert_eq!(
        (stats.complete, stats.incomplete, stats.downloaded),
        (2, 0, 2)
    );
}

#[test]
fn a_re_announce_replaces_the_stored_peer_id() {
    let s = store();
    announce(&s, &request("10.0.0.1", 1, 5, AnnounceEvent::None), 50);
    let mut changed = request("10.0.0.1", 1, 5, AnnounceEvent::None);
    changed.peer_id = PeerId([0xee; 20]);
    announce(&s, &changed, 50);
    let r = announce(&s, &request("10.0.0.2", 2, 5, AnnounceEvent::None), 50);
    assert_eq!(r.peers.len(), 1);
    assert_eq!(r.peers[0].peer_id, PeerId([0xee; 20]));
}

#[test]
fn a_refused_peer_leaves_no_empty_torrent_in_either_family() {
    let s = store_with(SwarmLimits {
        max_torrents: 10,
        max_peers_per_torrent: 0,
        peer_lifetime_secs: 60,
    });
    for ip in ["10.0.0.1", "::1"] {
        let mut response = AnnounceResponse::default();
        let err = s.announce(
            &request(ip, 1, 5, AnnounceEvent::None),
            50,
            PeerSelection::ALL,
            &mut response,
        );
        assert_eq!(err, Err(TORRENT_FULL));
        assert_eq!(s.totals(), StoreTotals::default());
        assert_eq!(s.torrent_count.load(Ordering::Relaxed), 0);
    }
}

/// The store against a plain map, over random announces, stops, expiries and cleans that
/// take both families back and forth between one peer, a list and an index, and into the
/// limit.
#[test]
fn random_operations_agree_with_a_simple_model() {
    const MAX: usize = peer_map::SMALL_MAX * 2;
    let s = store_with(SwarmLimits {
        max_torrents: 10,
        max_peers_per_torrent: MAX,
        peer_lifetime_secs: 60,
    });
    let hash = InfoHash([1; 20]);
    // Address -> (seeder, completed, expires_at).
    let mut model: std::collections::HashMap<SocketAddr, (bool, bool, u32)> = Default::default();
    // A torrent (and its count of downloads) lives until a clean finds it empty.
    let (mut exists, mut downloaded) = (false, 0);
    // The test is only as good as the states it reaches: (family, indexed) pairs, and full.
    let mut reached = HashSet::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for step in 0..20_000 {
        let v6 = rng.bool();
        let i = rng.usize(..MAX * 2);
        // Phases of joining and of leaving, so the swarm crosses the thresholds many times.
        let stops = if step / 2000 % 2 == 0 { 1 } else { 12 };
        let event = match rng.u8(..20) {
            n if n < stops => AnnounceEvent::Stopped,
            18 => AnnounceEvent::Completed,
            19 => AnnounceEvent::Started,
            _ => AnnounceEvent::None,
        };
        let req = nth(v6, i, rng.u64(..2), event);
        let addr = SocketAddr::new(req.peer_ip, req.port);
        let numwant = rng.usize(..MAX);
        let both = rng.bool();
        let mut response = AnnounceResponse::default();
        // Prefetching reads the store in every state it reaches here and must change nothing
        // (the model below would see it).
        for step in PrefetchStep::ALL {
            s.prefetch(step, &req.info_hash, addr, req.is_seeder());
        }
        let result = s.announce(
            &req,
            numwant,
            PeerSelection {
                both_families: both,
                peer_ids: true,
            },
            &mut response,
        );
        let family = |m: &std::collections::HashMap<SocketAddr, (bool, bool, u32)>, six: bool| {
            m.keys().filter(|a| a.is_ipv6() == six).count()
        };
        if event == AnnounceEvent::Stopped {
            model.remove(&addr);
            assert_eq!(result, Ok(()));
        } else if !model.contains_key(&addr) && family(&model, v6) >= MAX {
            assert_eq!(result, Err(TORRENT_FULL), "step {step}");
            reached.insert("full");
        } else {
            assert_eq!(result, Ok(()), "step {step}");
            let was_completed = model.get(&addr).is_some_and(|&(_, c, _)| c);
            let completed = event == AnnounceEvent::Completed;
            downloaded += u64::from(completed && !was_completed);
            let expires_at = s.clock().now() + 60;
            model.insert(
                addr,
                (req.is_seeder(), completed || was_completed, expires_at),
            );
            exists = true;
            // Others of a family the reply may list: a seeder is sent leechers only.
            let eligible = |six: bool| {
                model
                    .iter()
                    .filter(|&(a, &(seeder, _, _))| {
                        a.is_ipv6() == six && *a != addr && !(req.is_seeder() && seeder)
                    })
                    .count()
            };
            let own = eligible(v6);
            let mut expected = own.min(numwant);
            if both {
                expected += eligible(!v6).min(numwant - expected);
            }
            assert_eq!(response.peers.len(), expected, "step {step}");
            assert!(
                response.peers[..own.min(numwant)]
                    .iter()
                    .all(|p| p.addr.is_ipv6() == v6)
            );
            assert_peers_valid(&s, &req, &response);
        }
        if rng.u8(..100) == 0 {
            s.clock().advance(rng.u32(..30));
            let now = s.clock().now();
            let before = model.len();
            model.retain(|_, (_, _, expires_at)| *expires_at >= now);
            let report = s.clean();
            assert_eq!(report.peers_removed, before - model.len(), "step {step}");
            let removed = exists && model.is_empty();
            assert_eq!(report.torrents_removed, usize::from(removed), "step {step}");
            if removed {
                (exists, downloaded) = (false, 0);
            }
        }
        let stats = s.scrape(&hash);
        let seeders = model.values().filter(|(seeder, _, _)| *seeder).count() as u32;
        assert_eq!(stats.complete, seeders, "step {step}");
        assert_eq!(
            stats.incomplete,
            model.len() as u32 - seeders,
            "step {step}"
        );
        assert_eq!(stats.downloaded, downloaded, "step {step}");
        assert_eq!(s.totals().torrents, usize::from(exists), "step {step}");
        assert!(s.contains_peer(&hash, req.peer_ip, req.port) == model.contains_key(&addr));
        if exists {
            let key = s.key(&hash);
            let shard = s.lock(&key);
            let torrent = shard.get(&key).expect("stored");
            torrent.v4.assert_consistent();
            let one = if v6 {
                torrent.v6.as_ref().is_some_and(|v6| v6.peers.is_one())
            } else {
                torrent.v4.is_one()
            };
            if let Some(v6) = &torrent.v6 {
                v6.peers.assert_consistent();
            }
            drop(shard);
            reached.insert(match (v6, one, is_large(&s, &hash, v6)) {
                (false, true, _) => "v4 one",
                (false, false, false) => "v4 list",
                (false, false, true) => "v4 index",
                (true, true, _) => "v6 one",
                (true, false, false) => "v6 list",
                (true, false, true) => "v6 index",
            });
        }
    }
    assert_eq!(reached.len(), 7, "reached only {reached:?}");
    for v6 in [false, true] {
        for i in 0..MAX * 2 {
            let ip: IpAddr = host(v6, i).parse().unwrap();
            let addr = SocketAddr::new(ip, 1000 + i as u16);
            assert_eq!(
                s.contains_peer(&hash, ip, addr.port()),
                model.contains_key(&addr)
            );
        }
    }
}

#[test]
fn a_seeder_is_sent_leechers_only_and_a_leecher_everyone() {
    let s = store();
    announce(&s, &request("10.0.0.1", 1, 0, AnnounceEvent::None), 50);
    announce(&s, &request("10.0.0.2", 2, 0, AnnounceEvent::None), 50);
    announce(&s, &request("::3", 3, 7, AnnounceEvent::None), 50);
    announce(&s, &request("10.0.0.4", 4, 7, AnnounceEvent::None), 50);
    let seeder = announce(&s, &request("10.0.0.5", 5, 0, AnnounceEvent::None), 50);
    let mut ports: Vec<u16> = seeder.peers.iter().map(|p| p.addr.port()).collect();
    ports.sort_unstable();
    assert_eq!(ports, vec![3, 4], "both families' leechers, no seeders");
    assert_eq!(
        (seeder.complete, seeder.incomplete),
        (3, 2),
        "the counts still cover everyone"
    );
    let leecher = announce(&s, &request("10.0.0.6", 6, 7, AnnounceEvent::None), 50);
    assert_eq!(leecher.peers.len(), 5);
    // With no leecher left, a seeder gets nobody.
    announce(&s, &request("::3", 3, 7, AnnounceEvent::Stopped), 50);
    announce(&s, &request("10.0.0.4", 4, 7, AnnounceEvent::Stopped), 50);
    announce(&s, &request("10.0.0.6", 6, 7, AnnounceEvent::Stopped), 50);
    assert!(
        announce(&s, &request("10.0.0.5", 5, 0, AnnounceEvent::None), 50)
            .peers
            .is_empty()
    );
}

#[test]
fn info_hashes_chosen_to_share_their_first_bytes_still_spread_over_the_shards() {
    let store = SwarmStore::new(
        256,
        SwarmLimits {
            max_torrents: 100,
            max_peers_per_torrent: 100,
            peer_lifetime_secs: 60,
        },
        Clock::stopped(NOW),
    );
    // Raw bytes would put all of these in one shard: they differ only past byte 8.
    let shards: HashSet<usize> = (0..4096u32)
        .map(|i| {
            let mut hash = [0u8; 20];
            hash[16..].copy_from_slice(&i.to_le_bytes());
            store.shard_index(store.key(&InfoHash(hash)).hash)
        })
        .collect();
    assert!(shards.len() > 200, "{} of 256 shards used", shards.len());
}

#[test]
fn a_step_of_the_wall_clock_expires_no_peer() {
    let s = store();
    announce(&s, &request("10.0.0.1", 1, 0, AnnounceEvent::None), 50);
    s.clock().step_wall(1_000_000);
    assert_eq!(s.clean().peers_removed, 0);
    s.clock().step_wall(-2_000_000);
    assert_eq!(s.clean().peers_removed, 0);
    assert!(s.contains_peer(&InfoHash([1; 20]), "10.0.0.1".parse().unwrap(), 1));
    s.clock().advance(61);
    assert_eq!(s.clean().peers_removed, 1);
}

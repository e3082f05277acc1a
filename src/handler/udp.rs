//! UDP: one datagram in, at most one datagram out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{RequestError, Tracker};
use crate::bittorrent::{
    AnnounceRequest, AnnounceResponse, ClientError, InfoHash, Protocol, ScrapeStats,
};
use crate::metrics::{Action, WorkerMetrics};
use crate::middleware::RequestContext;
use crate::protocol::udp::request::{announce_target, scrape_hashes};
use crate::protocol::udp::response::{write_announce, write_connect, write_error, write_scrape};
use crate::protocol::udp::{UdpAnnounce, UdpDecodeError, UdpRequest, decode};
use crate::source::SourceBudget;
use crate::swarm::{PeerSelection, PrefetchStep};

/// Engines receive into buffers this large; a longer datagram is dropped unanswered.
pub const MAX_UDP_REQUEST_BYTES: usize = 2048;

/// One per worker: the shared tracker, this worker's counters and its scratch buffers.
pub struct UdpHandler {
    tracker: Arc<Tracker>,
    metrics: Arc<WorkerMetrics>,
    response: AnnounceResponse,
    url: Vec<u8>,
    info_hashes: Vec<InfoHash>,
    stats: Vec<(InfoHash, ScrapeStats)>,
    /// New torrents per source, this handler's share.
    budget: Option<SourceBudget>,
}

impl UdpHandler {
    pub fn new(tracker: Arc<Tracker>, metrics: Arc<WorkerMetrics>) -> Self {
        UdpHandler {
            budget: tracker.source_budget(),
            tracker,
            metrics,
            response: AnnounceResponse::default(),
            url: Vec::new(),
            info_hashes: Vec::new(),
            stats: Vec::new(),
        }
    }

    /// Starts fetching from memory what answering `packet` from `client` will need, one
    /// [`PrefetchStep`] at a time. Engines run the steps for a datagram a few places ahead of
    /// the one they answer (`engine::prefetch_schedule`), so that the cache misses of
    /// successive announces overlap rather than add up (profiled: with a million torrents,
    /// the store's misses were most of an announce's time).
    pub fn prefetch(&self, step: PrefetchStep, packet: &[u8], client: SocketAddr) {
        if let Some(target) = announce_target(packet) {
            // The client's own address: the one the announce most likely stores.
            let peer = SocketAddr::new(client.ip().to_canonical(), target.port);
            let store = &self.tracker.store;
            store.prefetch(step, &target.info_hash, peer, target.seeder);
        }
    }

    /// Answers one request datagram from `client` into `out` (cleared first). An empty `out`
    /// means no answer (a datagram too short to carry a transaction id).
    pub fn handle(&mut self, packet: &[u8], client: SocketAddr, out: &mut Vec<u8>) {
        out.clear();
        let started = self.metrics.start();
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        let (action, error) = self.answer(packet, client, out);
        if error.is_some() && out.len() > packet.len() && !self.proves_source(packet, client) {
            // A source address can be forged: an error to a request without a valid
            // connection id must not outgrow it, or hayate would amplify floods aimed at
            // someone else. A cut reason is still an error packet with the client's
            // transaction id.
            out.truncate(packet.len());
        }
        let response = match out.get(3) {
            None => None,
            Some(3) => Some(Action::Error),
            Some(_) => Some(action),
        };
        self.metrics.record(
            Protocol::Udp,
            client.is_ipv6(),
            action,
            response,
            error.as_ref(),
            started,
        );
    }

    /// Whether `packet` carries a connection id issued to `client`: only then has the source
    /// address answered us before, and cannot be forged. (Off the hot path: errors only.)
    #[cold]
    fn proves_source(&self, packet: &[u8], client: SocketAddr) -> bool {
        let Some(id) = packet.get(..8) else {
            return false;
        };
        let id = u64::from_be_bytes(id.try_into().expect("8 bytes"));
        let now = self.tracker.store.clock().wall();
        self.tracker.connection_ids.is_valid(id, now, client.ip())
    }

    /// decode -> tracker -> encode; returns what was asked and why it failed, if it did.
    fn answer(
        &mut self,
        packet: &[u8],
        client: SocketAddr,
        out: &mut Vec<u8>,
    ) -> (Action, Option<RequestError>) {
        let tracker = &*self.tracker;
        // Connection ids are checked by other nodes too: they carry the wall clock.
        let now = tracker.store.clock().wall();
        let request = match decode(packet) {
            Ok(request) => request,
            Err(UdpDecodeError::Unanswerable) => {
                return (
                    Action::Other,
                    Some(RequestError::BadRequest(ClientError::new("too short"))),
                );
            }
            Err(UdpDecodeError::Malformed {
                transaction_id,
                reason,
            }) => {
                write_error(out, transaction_id, reason);
                return (
                    Action::Other,
                    Some(RequestError::BadRequest(ClientError::new(reason))),
                );
            }
        };
        let (action, transaction_id, result) = match request {
            UdpRequest::Connect { transaction_id } => {
                write_connect(
                    out,
                    transaction_id,
                    tracker.connection_ids.issue(now, client.ip()),
                );
                return (Action::Connect, None);
            }
            UdpRequest::Announce(a) => {
                let result = if tracker
                    .connection_ids
                    .is_valid(a.connection_id, now, client.ip())
                {
                    self.announce(&a, client, out)
                } else {
                    Err(RequestError::BadConnectionId)
                };
                (Action::Announce, a.transaction_id, result)
            }
            UdpRequest::Scrape {
                connection_id,
                transaction_id,
                info_hashes,
            } => {
                let result = if tracker
                    .connection_ids
                    .is_valid(connection_id, now, client.ip())
                {
                    self.scrape(transaction_id, info_hashes, client, out)
                } else {
                    Err(RequestError::BadConnectionId)
                };
                (Action::Scrape, transaction_id, result)
            }
        };
        match result {
            Ok(()) => (action, None),
            Err(e) => {
                out.clear();
                write_error(out, transaction_id, e.reason());
                (action, Some(e))
            }
        }
    }

    fn announce(
        &mut self,
        a: &UdpAnnounce<'_>,
        client: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), RequestError> {
        let tracker = &*self.tracker;
        a.options.url_into(&mut self.url);
        let ctx = RequestContext {
            protocol: Protocol::Udp,
            client,
            url: &self.url,
        };
        // The `ip` field is IPv4: honoured for IPv4 clients only, so the response family stays
        // the socket's.
        let peer_ip = match (a.ip, client.ip()) {
            (Some(ip), IpAddr::V4(_)) if tracker.announce.allow_client_ip => IpAddr::V4(ip),
            (_, ip) => ip,
        };
        let mut request = AnnounceRequest {
            info_hash: a.info_hash,
            peer_id: a.peer_id,
            peer_ip,
            port: a.port,
            uploaded: a.uploaded,
            downloaded: a.downloaded,
            left: a.left,
            event: a.event,
            numwant: a.num_want,
            key: Some(a.key),
        };
        // One family's addresses, no peer ids: all a UDP reply can carry.
        let selection = PeerSelection::default();
        tracker.announce(
            &ctx,
            &mut request,
            selection,
            &mut self.response,
            self.budget.as_mut(),
        )?;
        write_announce(out, a.transaction_id, &self.response, client.is_ipv6());
        Ok(())
    }

    fn scrape(
        &mut self,
        transaction_id: u32,
        info_hashes: &[u8],
        client: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), RequestError> {
        let tracker = &*self.tracker;
        if info_hashes.len() / 20 > tracker.udp_max_scrape {
            return Err(RequestError::LimitReached(ClientError::new(
                "too many info hashes in one scrape",
            )));
        }
        self.info_hashes.clear();
        self.info_hashes.extend(scrape_hashes(info_hashes));
        let ctx = RequestContext {
            protocol: Protocol::Udp,
            client,
            url: &[],
        };
        tracker.scrape(&ctx, &mut self.info_hashes, &mut self.stats)?;
        write_scrape(out, transaction_id, self.stats.iter().map(|(_, s)| *s));
        Ok(())
    }
}

//! UDP: one datagram in, at most one datagram out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{RequestError, Tracker};
use crate::bittorrent::{AnnounceRequest, AnnounceResponse, InfoHash, Protocol, ScrapeStats};
use crate::middleware::RequestContext;
use crate::protocol::udp::request::scrape_hashes;
use crate::protocol::udp::response::{write_announce, write_connect, write_error, write_scrape};
use crate::protocol::udp::{UdpDecodeError, UdpRequest, decode};

/// Engines receive into buffers this large; a longer datagram is truncated and refused.
pub const MAX_UDP_REQUEST_BYTES: usize = 2048;

/// One per worker: the shared tracker plus this worker's scratch buffers.
pub struct UdpHandler {
    tracker: Arc<Tracker>,
    response: AnnounceResponse,
    url: Vec<u8>,
    info_hashes: Vec<InfoHash>,
    stats: Vec<(InfoHash, ScrapeStats)>,
}

impl UdpHandler {
    pub fn new(tracker: Arc<Tracker>) -> Self {
        UdpHandler {
            tracker,
            response: AnnounceResponse::default(),
            url: Vec::new(),
            info_hashes: Vec::new(),
            stats: Vec::new(),
        }
    }

    /// Answers one request datagram from `client` into `out` (cleared first). An empty `out`
    /// means no answer (a datagram too short to carry a transaction id).
    pub fn handle(&mut self, packet: &[u8], client: SocketAddr, out: &mut Vec<u8>) {
        out.clear();
        let tracker = &*self.tracker;
        let now = tracker.store.clock().now();
        let client_ip = client.ip().to_canonical();
        let client = SocketAddr::new(client_ip, client.port());
        match decode(packet) {
            Err(UdpDecodeError::Unanswerable) => {}
            Err(UdpDecodeError::Malformed {
                transaction_id,
                reason,
            }) => {
                write_error(out, transaction_id, reason);
            }
            Ok(UdpRequest::Connect { transaction_id }) => {
                write_connect(
                    out,
                    transaction_id,
                    tracker.connection_ids.issue(now, client_ip),
                );
            }
            Ok(UdpRequest::Announce(a)) => {
                if !tracker
                    .connection_ids
                    .is_valid(a.connection_id, now, client_ip)
                {
                    return write_error(
                        out,
                        a.transaction_id,
                        RequestError::BadConnectionId.reason(),
                    );
                }
                a.options.url_into(&mut self.url);
                let ctx = RequestContext {
                    protocol: Protocol::Udp,
                    client,
                    url: &self.url,
                };
                // The `ip` field is IPv4: honoured for IPv4 clients only, so the response
                // family stays the socket's.
                let peer_ip = match (a.ip, client_ip) {
                    (Some(ip), IpAddr::V4(_)) if tracker.announce.allow_client_ip => IpAddr::V4(ip),
                    _ => client_ip,
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
                match tracker.announce(&ctx, &mut request, false, &mut self.response) {
                    Ok(()) => {
                        write_announce(out, a.transaction_id, &self.response, client_ip.is_ipv6())
                    }
                    Err(e) => write_error(out, a.transaction_id, e.reason()),
                }
            }
            Ok(UdpRequest::Scrape {
                connection_id,
                transaction_id,
                info_hashes,
            }) => {
                if !tracker
                    .connection_ids
                    .is_valid(connection_id, now, client_ip)
                {
                    return write_error(
                        out,
                        transaction_id,
                        RequestError::BadConnectionId.reason(),
                    );
                }
                if info_hashes.len() / 20 > tracker.udp_max_scrape {
                    return write_error(out, transaction_id, "too many info hashes in one scrape");
                }
                self.info_hashes.clear();
                self.info_hashes.extend(scrape_hashes(info_hashes));
                let ctx = RequestContext {
                    protocol: Protocol::Udp,
                    client,
                    url: &[],
                };
                match tracker.scrape(&ctx, &mut self.info_hashes, &mut self.stats) {
                    Ok(()) => write_scrape(out, transaction_id, self.stats.iter().map(|(_, s)| *s)),
                    Err(e) => write_error(out, transaction_id, e.reason()),
                }
            }
        }
    }
}

//! HTTP: one parsed request in, one HTTP response out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{RequestError, Tracker};
use crate::bittorrent::{
    AnnounceRequest, AnnounceResponse, ClientError, InfoHash, Protocol, ScrapeStats,
};
use crate::metrics::{Action, WorkerMetrics};
use crate::middleware::RequestContext;
use crate::protocol::http::forwarded;
use crate::protocol::http::response::{write_announce, write_failure, write_http, write_scrape};
use crate::protocol::http::{HttpAnnounce, HttpRequest, decode_target};
use crate::source::SourceBudget;
use crate::swarm::PeerSelection;

const OK: &str = "200 OK";
const TEXT: &str = "text/plain";

/// One per worker: the shared tracker plus this worker's scratch buffers.
pub struct HttpHandler {
    tracker: Arc<Tracker>,
    metrics: Arc<WorkerMetrics>,
    response: AnnounceResponse,
    body: Vec<u8>,
    info_hashes: Vec<InfoHash>,
    stats: Vec<(InfoHash, ScrapeStats)>,
    /// New torrents per source, this handler's share.
    budget: Option<SourceBudget>,
}

impl HttpHandler {
    pub fn new(tracker: Arc<Tracker>, metrics: Arc<WorkerMetrics>) -> Self {
        HttpHandler {
            budget: tracker.source_budget(),
            tracker,
            metrics,
            response: AnnounceResponse::default(),
            body: Vec::new(),
            info_hashes: Vec::new(),
            stats: Vec::new(),
        }
    }

    /// Appends the response to `request` (from the connection's peer `socket`) to `out`.
    pub fn handle(
        &mut self,
        request: &httparse::Request<'_, '_>,
        socket: SocketAddr,
        close: bool,
        out: &mut Vec<u8>,
    ) {
        let started = self.metrics.start();
        self.body.clear();
        let socket_ip = socket.ip().to_canonical();
        let target = request.path.unwrap_or("/").as_bytes();
        let (status, action, error) = if request.method != Some("GET") {
            self.body.extend_from_slice(b"only GET is supported");
            ("405 Method Not Allowed", Action::Other, None)
        } else {
            match self.client_ip(request, socket_ip) {
                Ok(client_ip) => {
                    self.tracker_request(target, SocketAddr::new(client_ip, socket.port()))
                }
                Err(e) => (OK, Action::Other, Some(RequestError::BadRequest(e))),
            }
        };
        if let Some(e) = &error {
            self.body.clear();
            write_failure(&mut self.body, e.reason(), None);
        }
        write_http(out, status, TEXT, &self.body, close);
        let response = if error.is_some() {
            Action::Error
        } else {
            action
        };
        self.metrics.record(
            Protocol::Http,
            socket_ip.is_ipv6(),
            action,
            Some(response),
            error.as_ref(),
            started,
        );
    }

    /// decode -> tracker -> encode, into `self.body`; returns the HTTP status, what was asked,
    /// and why it failed, if it did.
    fn tracker_request(
        &mut self,
        target: &[u8],
        client: SocketAddr,
    ) -> (&'static str, Action, Option<RequestError>) {
        let tracker = &*self.tracker;
        let ctx = RequestContext {
            protocol: Protocol::Http,
            client,
            url: target,
        };
        let action = if target.starts_with(b"/announce") {
            Action::Announce
        } else if target.starts_with(b"/scrape") {
            Action::Scrape
        } else {
            Action::Other
        };
        let result = match decode_target(target, &mut self.info_hashes, tracker.http_max_scrape) {
            Ok(HttpRequest::NotFound) => {
                self.body.extend_from_slice(b"not found");
                return ("404 Not Found", Action::Other, None);
            }
            Ok(HttpRequest::Announce(a)) => {
                let mut request =
                    announce_request(&a, client.ip(), tracker.announce.allow_client_ip);
                let selection = PeerSelection {
                    both_families: true,
                    peer_ids: !a.compact && !a.no_peer_id,
                };
                tracker
                    .announce(
                        &ctx,
                        &mut request,
                        selection,
                        &mut self.response,
                        self.budget.as_mut(),
                    )
                    .map(|()| {
                        write_announce(
                            &mut self.body,
                            &self.response,
                            a.compact,
                            a.no_peer_id,
                            client.ip(),
                        )
                    })
            }
            Ok(HttpRequest::Scrape) => {
                // `files` is a dictionary: its keys must be sorted and unique.
                self.info_hashes.sort_unstable();
                self.info_hashes.dedup();
                tracker
                    .scrape(&ctx, &mut self.info_hashes, &mut self.stats)
                    .map(|()| write_scrape(&mut self.body, &self.stats))
            }
            Err(e) => Err(RequestError::BadRequest(e)),
        };
        (OK, action, result.err())
    }

    /// The socket address, or the one the reverse-proxy rule finds.
    fn client_ip(
        &self,
        request: &httparse::Request<'_, '_>,
        socket_ip: IpAddr,
    ) -> Result<IpAddr, ClientError> {
        let Some((header, trusted)) = &self.tracker.reverse_proxy else {
            return Ok(socket_ip);
        };
        let values: Vec<&[u8]> = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(header))
            .map(|h| h.value)
            .collect();
        forwarded::client_ip(socket_ip, values.into_iter(), trusted)
    }
}

/// The store's view of an HTTP announce: the client's address unless config lets the client
/// name its own (`ip`, then the `ipv4`/`ipv6` of the client's family).
fn announce_request(a: &HttpAnnounce, client_ip: IpAddr, allow_client_ip: bool) -> AnnounceRequest {
    let announced = match client_ip {
        IpAddr::V4(_) => a.ip.or(a.ipv4.map(IpAddr::V4)),
        IpAddr::V6(_) => a.ip.or(a.ipv6.map(IpAddr::V6)),
    };
    let peer_ip = match announced {
        Some(ip) if allow_client_ip => ip.to_canonical(),
        _ => client_ip,
    };
    AnnounceRequest {
        info_hash: a.info_hash,
        peer_id: a.peer_id,
        peer_ip,
        port: a.port,
        uploaded: a.uploaded,
        downloaded: a.downloaded,
        left: a.left,
        event: a.event,
        numwant: a.numwant,
        key: a.key,
    }
}

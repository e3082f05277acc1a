//! What the handlers of all workers share: the store, the hooks and the settings they apply.

use std::sync::Arc;

use ipnet::IpNet;

use crate::bittorrent::{AnnounceRequest, AnnounceResponse, ClientError, InfoHash, ScrapeStats};
use crate::config::{AnnounceConfig, Config, parse_hex_key};
use crate::middleware::{Middleware, Rejection, RequestContext};
use crate::protocol::udp::ConnectionIdKey;
use crate::source::SourceBudget;
use crate::swarm::{PeerSelection, SwarmStore};

/// Why a request was not served: the reason the client gets, and the kind the metrics count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed or invalid input.
    BadRequest(ClientError),
    /// A UDP connection id that is not valid (made up, expired, or another address's).
    BadConnectionId,
    /// A pre-hook said no.
    RejectedByHook {
        hook: &'static str,
        reason: ClientError,
    },
    /// A store limit (torrents, peers per torrent, scrape size) was reached.
    LimitReached(ClientError),
}

impl RequestError {
    pub fn reason(&self) -> &str {
        match self {
            RequestError::BadRequest(e) | RequestError::LimitReached(e) => e.reason(),
            RequestError::BadConnectionId => "invalid or expired connection id",
            RequestError::RejectedByHook { reason, .. } => reason.reason(),
        }
    }
}

impl From<Rejection> for RequestError {
    fn from(r: Rejection) -> Self {
        RequestError::RejectedByHook {
            hook: r.hook,
            reason: r.error,
        }
    }
}

pub struct Tracker {
    pub store: Arc<SwarmStore>,
    pub middleware: Middleware,
    pub announce: AnnounceConfig,
    pub connection_ids: ConnectionIdKey,
    pub udp_max_scrape: usize,
    pub http_max_scrape: usize,
    /// Trusted proxies and the header they set, when the reverse-proxy rule is on.
    pub reverse_proxy: Option<(String, Vec<IpNet>)>,
    /// New torrents per source: (burst, per minute) for each handler, and the IPv6 prefix.
    budget_share: (u32, u32, u8),
}

impl Tracker {
    pub fn new(
        config: &Config,
        store: Arc<SwarmStore>,
        middleware: Middleware,
    ) -> anyhow::Result<Self> {
        let lifetime = config.udp.connection_id_lifetime_secs;
        let connection_ids = match parse_hex_key(&config.udp.connection_id_secret) {
            Some(key) => ConnectionIdKey::new(key, lifetime),
            None => {
                if config.udp.enabled {
                    tracing::warn!(
                        "udp.connection_id_secret is not set: using a random key, so other nodes \
                         will not accept this node's connection ids"
                    );
                }
                ConnectionIdKey::random(lifetime)?
            }
        };
        let proxy = &config.http.reverse_proxy;
        // Every worker has a handler per protocol, each with its own budget (no shared state
        // on the request path): each gets an even share.
        let protocols = u32::from(config.udp.enabled) + u32::from(config.http.enabled);
        let handlers = (config.worker_count() as u32).saturating_mul(protocols.max(1));
        let per_source = &config.per_source;
        let share = |n: u32| if n == 0 { 0 } else { n.div_ceil(handlers) };
        Ok(Tracker {
            store,
            middleware,
            announce: config.announce.clone(),
            connection_ids,
            udp_max_scrape: config.udp.max_scrape_hashes,
            http_max_scrape: config.http.max_scrape_hashes,
            reverse_proxy: proxy.enabled.then(|| {
                (
                    proxy.header.to_ascii_lowercase(),
                    proxy.trusted_proxies.clone(),
                )
            }),
            budget_share: (
                share(per_source.new_torrents_burst),
                share(per_source.new_torrents_per_minute),
                per_source.ipv6_prefix_len,
            ),
        })
    }

    /// A handler's own budget of new torrents per source (`None`: unlimited).
    pub fn source_budget(&self) -> Option<SourceBudget> {
        let (burst, per_minute, ipv6_prefix_len) = self.budget_share;
        SourceBudget::new(burst, per_minute, ipv6_prefix_len)
    }

    /// pre-hooks -> store -> post-hooks. `both_families`: also list peers of the other address
    /// family (HTTP can carry both; a UDP response carries one).
    /// `budget` (the handler's) decides whether the announce may create a torrent.
    pub fn announce(
        &self,
        ctx: &RequestContext<'_>,
        request: &mut AnnounceRequest,
        selection: PeerSelection,
        response: &mut AnnounceResponse,
        budget: Option<&mut SourceBudget>,
    ) -> Result<(), RequestError> {
        self.middleware.before_announce(ctx, request)?;
        let numwant = request
            .numwant
            .unwrap_or(self.announce.default_numwant)
            .min(self.announce.max_numwant);
        response.interval = self.announce.interval_secs;
        response.min_interval = self.announce.min_interval_secs;
        let source = ctx.client.ip();
        let store = &*self.store;
        let may_create = || budget.is_none_or(|b| b.try_spend(source, store.clock().now()));
        store
            .announce_limited(request, numwant as usize, selection, response, may_create)
            .map_err(RequestError::LimitReached)?;
        self.middleware.after_announce(ctx, request, response);
        Ok(())
    }

    /// pre-hooks -> store -> post-hooks, one result per hash in `info_hashes` (in order).
    pub fn scrape(
        &self,
        ctx: &RequestContext<'_>,
        info_hashes: &mut Vec<InfoHash>,
        stats: &mut Vec<(InfoHash, ScrapeStats)>,
    ) -> Result<(), RequestError> {
        self.middleware.before_scrape(ctx, info_hashes)?;
        stats.clear();
        stats.extend(info_hashes.iter().map(|h| (*h, self.store.scrape(h))));
        self.middleware.after_scrape(ctx, stats);
        Ok(())
    }
}

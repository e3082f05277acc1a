//! The hook chain around the store, as in Chihaya: pre-hooks see (and may reject or adjust) the
//! request before the store, post-hooks may adjust the response after it. Empty by default; an
//! empty chain costs one length check per request.

use std::net::SocketAddr;

use crate::bittorrent::{
    AnnounceRequest, AnnounceResponse, ClientError, InfoHash, Protocol, ScrapeStats,
};

/// What a hook may know of the request beyond its decoded fields.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    pub protocol: Protocol,
    /// The client's address (after the reverse-proxy rule, for HTTP).
    pub client: SocketAddr,
    /// Path and query of the announce URL: the HTTP request target, or the UDP BEP 41 URL
    /// data. Where passkeys and tokens travel.
    pub url: &'a [u8],
}

/// Runs before the store. Rejecting returns a reason the client sees.
pub trait PreHook: Send + Sync {
    fn name(&self) -> &'static str;

    fn before_announce(
        &self,
        _ctx: &RequestContext<'_>,
        _request: &mut AnnounceRequest,
    ) -> Result<(), ClientError> {
        Ok(())
    }

    fn before_scrape(
        &self,
        _ctx: &RequestContext<'_>,
        _info_hashes: &mut Vec<InfoHash>,
    ) -> Result<(), ClientError> {
        Ok(())
    }
}

/// Runs after the store, on a successful request.
pub trait PostHook: Send + Sync {
    fn name(&self) -> &'static str;

    fn after_announce(
        &self,
        _ctx: &RequestContext<'_>,
        _request: &AnnounceRequest,
        _response: &mut AnnounceResponse,
    ) {
    }

    fn after_scrape(&self, _ctx: &RequestContext<'_>, _stats: &mut [(InfoHash, ScrapeStats)]) {}
}

/// The configured hooks, in order.
#[derive(Default)]
pub struct Middleware {
    pre: Vec<Box<dyn PreHook>>,
    post: Vec<Box<dyn PostHook>>,
}

impl Middleware {
    pub fn new(pre: Vec<Box<dyn PreHook>>, post: Vec<Box<dyn PostHook>>) -> Self {
        Middleware { pre, post }
    }

    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }

    pub fn before_announce(
        &self,
        ctx: &RequestContext<'_>,
        request: &mut AnnounceRequest,
    ) -> Result<(), ClientError> {
        self.pre
            .iter()
            .try_for_each(|hook| hook.before_announce(ctx, request))
    }

    pub fn before_scrape(
        &self,
        ctx: &RequestContext<'_>,
        info_hashes: &mut Vec<InfoHash>,
    ) -> Result<(), ClientError> {
        self.pre
            .iter()
            .try_for_each(|hook| hook.before_scrape(ctx, info_hashes))
    }

    pub fn after_announce(
        &self,
        ctx: &RequestContext<'_>,
        request: &AnnounceRequest,
        response: &mut AnnounceResponse,
    ) {
        self.post
            .iter()
            .for_each(|hook| hook.after_announce(ctx, request, response));
    }

    pub fn after_scrape(&self, ctx: &RequestContext<'_>, stats: &mut [(InfoHash, ScrapeStats)]) {
        self.post
            .iter()
            .for_each(|hook| hook.after_scrape(ctx, stats));
    }
}

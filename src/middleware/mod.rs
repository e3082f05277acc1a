//! The hook chain around the store, as in Chihaya: pre-hooks see (and may reject or adjust) the
//! request before the store, post-hooks may adjust the response after it. Configured in YAML as
//! ordered lists of `{name, options}`; empty by default, and an empty chain costs one length
//! check per request.

mod client_approval;
mod interval_variation;
mod jwt;
mod torrent_approval;

use std::net::SocketAddr;

use anyhow::Context;
use serde::Deserialize;

pub use client_approval::{ClientApproval, ClientApprovalConfig};
pub use interval_variation::{IntervalVariation, IntervalVariationConfig};
pub use jwt::{Jwt, JwtConfig, usable_keys_in_set};
pub use torrent_approval::{TorrentApproval, TorrentApprovalConfig};

use crate::bittorrent::{
    AnnounceRequest, AnnounceResponse, ClientError, InfoHash, Protocol, ScrapeStats,
};
use crate::clock::Clock;

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

    /// Reloads whatever the hook reads from outside (on SIGHUP). Runs on the supervisor's
    /// thread, which also handles SIGTERM: work that may wait on the network belongs on a
    /// thread of the hook's own, which this only wakes.
    fn reload(&self) {}

    /// For hooks that fetch signing keys: how many refreshes failed.
    fn jwks_refresh_failures(&self) -> Option<u64> {
        None
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

/// A pre-hook said no.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub hook: &'static str,
    pub error: ClientError,
}

/// One entry of `prehooks`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    tag = "name",
    content = "options",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum PreHookConfig {
    ClientApproval(ClientApprovalConfig),
    TorrentApproval(TorrentApprovalConfig),
    Jwt(JwtConfig),
}

/// One entry of `posthooks`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(
    tag = "name",
    content = "options",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum PostHookConfig {
    IntervalVariation(IntervalVariationConfig),
}

impl PreHookConfig {
    /// Checks the options; the error says which option and why.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PreHookConfig::ClientApproval(c) => c.validate(),
            PreHookConfig::TorrentApproval(c) => c.validate(),
            PreHookConfig::Jwt(c) => c.validate(),
        }
    }
}

impl PostHookConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PostHookConfig::IntervalVariation(c) => c.validate(),
        }
    }
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

    /// Builds the chain the config names, in its order. Hooks that check times read `clock`.
    pub fn from_config(
        pre: &[PreHookConfig],
        post: &[PostHookConfig],
        clock: &Clock,
    ) -> anyhow::Result<Self> {
        let mut chain = Middleware::default();
        for (i, hook) in pre.iter().enumerate() {
            let built: anyhow::Result<Box<dyn PreHook>> = match hook {
                PreHookConfig::ClientApproval(c) => {
                    ClientApproval::new(c).map(|h| Box::new(h) as _)
                }
                PreHookConfig::TorrentApproval(c) => {
                    TorrentApproval::new(c).map(|h| Box::new(h) as _)
                }
                PreHookConfig::Jwt(c) => Jwt::new(c, clock).map(|h| Box::new(h) as _),
            };
            chain
                .pre
                .push(built.with_context(|| format!("prehooks[{i}]"))?);
        }
        for hook in post {
            chain.post.push(match hook {
                PostHookConfig::IntervalVariation(c) => Box::new(IntervalVariation::new(c)),
            });
        }
        Ok(chain)
    }

    /// Adds hooks that are not in the config (a library user's own).
    pub fn with(mut self, pre: Vec<Box<dyn PreHook>>, post: Vec<Box<dyn PostHook>>) -> Self {
        self.pre.extend(pre);
        self.post.extend(post);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }

    pub fn pre_hook_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.pre.iter().map(|h| h.name())
    }

    pub fn before_announce(
        &self,
        ctx: &RequestContext<'_>,
        request: &mut AnnounceRequest,
    ) -> Result<(), Rejection> {
        for hook in &self.pre {
            hook.before_announce(ctx, request)
                .map_err(|error| Rejection {
                    hook: hook.name(),
                    error,
                })?;
        }
        Ok(())
    }

    pub fn before_scrape(
        &self,
        ctx: &RequestContext<'_>,
        info_hashes: &mut Vec<InfoHash>,
    ) -> Result<(), Rejection> {
        for hook in &self.pre {
            hook.before_scrape(ctx, info_hashes)
                .map_err(|error| Rejection {
                    hook: hook.name(),
                    error,
                })?;
        }
        Ok(())
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

    /// `(hook, failed refreshes)` of every hook that fetches signing keys.
    pub fn jwks_refresh_failures(&self) -> Vec<(&'static str, u64)> {
        self.pre
            .iter()
            .filter_map(|h| Some((h.name(), h.jwks_refresh_failures()?)))
            .collect()
    }

    /// SIGHUP: every hook rereads what it reads from outside (a file at once; the `jwt`
    /// hook's key set on its refresh thread, shortly after this returns).
    pub fn reload(&self) {
        self.pre.iter().for_each(|hook| hook.reload());
    }
}

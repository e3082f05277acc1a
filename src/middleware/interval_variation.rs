//! Spreads re-announces out in time: with some probability, adds a random delay to `interval`
//! (and optionally `min interval`), so clients that started together drift apart. Chihaya's
//! `varinterval`, with its option names.

use serde::Deserialize;

use super::{PostHook, RequestContext};
use crate::bittorrent::{AnnounceRequest, AnnounceResponse};
use crate::config::DAY_SECS;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntervalVariationConfig {
    /// Share of responses that get a longer interval, 0 to 1.
    pub modify_response_probability: f64,
    /// The largest delay added, in seconds (a uniform draw from 1 to this).
    pub max_increase_delta: u32,
    /// Add the same delay to `min interval`.
    pub modify_min_interval: bool,
}

impl Default for IntervalVariationConfig {
    fn default() -> Self {
        IntervalVariationConfig {
            modify_response_probability: 0.2,
            max_increase_delta: 60,
            modify_min_interval: true,
        }
    }
}

impl IntervalVariationConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.modify_response_probability) {
            return Err("`modify_response_probability` must be between 0 and 1".into());
        }
        // A delay of more than a day is no longer spreading re-announces out; the bound also
        // keeps interval plus delay far from overflowing the 32-bit interval of a UDP reply.
        if !(1..=DAY_SECS).contains(&self.max_increase_delta) {
            return Err(format!(
                "`max_increase_delta` must be between 1 and {DAY_SECS} (a day)"
            ));
        }
        Ok(())
    }
}

pub struct IntervalVariation {
    config: IntervalVariationConfig,
}

impl IntervalVariation {
    pub fn new(config: &IntervalVariationConfig) -> Self {
        IntervalVariation {
            config: config.clone(),
        }
    }
}

impl PostHook for IntervalVariation {
    fn name(&self) -> &'static str {
        "interval_variation"
    }

    fn after_announce(
        &self,
        _: &RequestContext<'_>,
        _: &AnnounceRequest,
        response: &mut AnnounceResponse,
    ) {
        if fastrand::f64() >= self.config.modify_response_probability {
            return;
        }
        let delta = fastrand::u32(1..=self.config.max_increase_delta);
        response.interval = response.interval.saturating_add(delta);
        if self.config.modify_min_interval {
            response.min_interval = response.min_interval.saturating_add(delta);
        }
    }
}

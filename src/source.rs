//! Clients counted by where they come from, for the per-source limits (`per_source` in the
//! config): an IPv4 address, or an IPv6 prefix, because one host or home usually holds a whole
//! /64 and counting its addresses one by one would count nothing.

use std::collections::HashMap;
use std::net::IpAddr;

/// One source: an IPv4 address (as its IPv4-mapped IPv6 form), or an IPv6 address cut to the
/// configured prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    pub fn new(ip: IpAddr, ipv6_prefix_len: u8) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey(u128::from(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => {
                let bits = u32::from(ipv6_prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                SourceKey(u128::from(v6) & mask)
            }
        }
    }
}

/// Token buckets per source: each source may spend `burst` at once, and earns back
/// `per_minute` a minute. Used for creating torrents, which is what fills the store: one
/// source created 6.8 M torrents in a minute when nothing limited it.
///
/// One per worker and protocol (no lock, no shared line); the configured figures are split
/// between them, since the kernel spreads one source's sockets over the workers.
pub struct SourceBudget {
    burst: f32,
    per_second: f32,
    ipv6_prefix_len: u8,
    buckets: HashMap<SourceKey, Bucket, foldhash::fast::RandomState>,
    max_sources: usize,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f32,
    /// When `tokens` was last brought up to date (the coarse clock's seconds).
    at: u32,
}

/// Sources remembered per budget; past that, sources whose buckets are full again are
/// forgotten, and if none are, new sources go unmetered. An attacker with this many sources
/// already commands that many bursts, so the map's memory stays bounded (about 2 MB) without
/// refusing the legitimate newcomers.
pub const MAX_SOURCES: usize = 65_536;

impl SourceBudget {
    /// `None` when `burst` is 0 (no limit).
    pub fn new(burst: u32, per_minute: u32, ipv6_prefix_len: u8) -> Option<Self> {
        (burst > 0).then(|| SourceBudget {
            burst: burst as f32,
            per_second: per_minute as f32 / 60.0,
            ipv6_prefix_len,
            buckets: HashMap::default(),
            max_sources: MAX_SOURCES,
        })
    }

    /// Spends one token of `ip`'s source at `now`; false when it has none left.
    pub fn try_spend(&mut self, ip: IpAddr, now: u32) -> bool {
        let key = SourceKey::new(ip, self.ipv6_prefix_len);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_sources {
            self.forget_full(now);
            if self.buckets.len() >= self.max_sources {
                return true;
            }
        }
        let (burst, per_second) = (self.burst, self.per_second);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens = refilled(*bucket, now, burst, per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the sources that have earned their whole burst back: they are as if new.
    fn forget_full(&mut self, now: u32) {
        let (burst, per_second) = (self.burst, self.per_second);
        self.buckets
            .retain(|_, b| refilled(*b, now, burst, per_second) < burst);
    }

    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

fn refilled(bucket: Bucket, now: u32, burst: f32, per_second: f32) -> f32 {
    let elapsed = now.saturating_sub(bucket.at) as f32;
    (bucket.tokens + elapsed * per_second).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_sources_are_counted_by_prefix_and_ipv4_by_address() {
        let a = SourceKey::new(ip("2001:db8:1:2:aaaa::1"), 64);
        assert_eq!(a, SourceKey::new(ip("2001:db8:1:2:ffff::9"), 64));
        assert_ne!(a, SourceKey::new(ip("2001:db8:1:3::1"), 64));
        assert_eq!(
            SourceKey::new(ip("2001:db8:1:2:aaaa::1"), 48),
            SourceKey::new(ip("2001:db8:1:3::1"), 48)
        );
        assert_ne!(
            SourceKey::new(ip("10.0.0.1"), 64),
            SourceKey::new(ip("10.0.0.2"), 64)
        );
        // An IPv4-mapped address is its IPv4 source.
        assert_eq!(
            SourceKey::new(ip("::ffff:10.0.0.1"), 64),
            SourceKey::new(ip("10.0.0.1"), 0)
        );
        assert_eq!(
            SourceKey::new(ip("2001:db8::1"), 0),
            SourceKey::new(ip("::"), 0)
        );
        assert_ne!(
            SourceKey::new(ip("2001:db8::1"), 128),
            SourceKey::new(ip("2001:db8::2"), 128)
        );
    }

    #[test]
    fn a_source_spends_its_burst_then_earns_tokens_back_with_time() {
        let mut budget = SourceBudget::new(3, 60, 64).unwrap();
        let a = ip("192.0.2.1");
        assert!((0..3).all(|_| budget.try_spend(a, 100)));
        assert!(!budget.try_spend(a, 100));
        assert!(!budget.try_spend(a, 100));
        // Another source has its own bucket.
        assert!(budget.try_spend(ip("192.0.2.2"), 100));
        // 60 a minute: one a second.
        assert!(budget.try_spend(a, 101));
        assert!(!budget.try_spend(a, 101));
        assert!(budget.try_spend(a, 103));
        assert!(budget.try_spend(a, 103));
        assert!(!budget.try_spend(a, 103));
        // Never more than the burst, however long the source was away.
        assert!((0..3).all(|_| budget.try_spend(a, 100_000)));
        assert!(!budget.try_spend(a, 100_000));
    }

    #[test]
    fn no_burst_means_no_budget() {
        assert!(SourceBudget::new(0, 100, 64).is_none());
    }

    #[test]
    fn the_remembered_sources_stay_bounded() {
        let mut budget = SourceBudget::new(2, 60, 64).unwrap();
        budget.max_sources = 100;
        let source = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // 100 sources spend everything; the 101st is let through unmetered.
        for i in 0..100 {
            assert!(budget.try_spend(source(i), 10));
            assert!(budget.try_spend(source(i), 10));
            assert!(!budget.try_spend(source(i), 10));
        }
        assert!(budget.try_spend(source(1000), 10));
        assert_eq!(budget.sources(), 100);
        // Once they have earned their burst back they are forgotten to make room.
        assert!(budget.try_spend(source(1001), 20));
        assert_eq!(budget.sources(), 1);
        assert!(
            budget.try_spend(source(5), 20),
            "a forgotten source starts afresh"
        );
    }
}

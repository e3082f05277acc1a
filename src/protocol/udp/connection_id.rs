//! Stateless connection ids (BEP 15).
//!
//! An id is 16 bits of its issue time (UNIX seconds) and a 48-bit SipHash-2-4 MAC over the full
//! issue time and the client's IP. Checking one needs no state: rebuild the full time from the
//! 16 bits and the current time, recompute the MAC, compare in constant time. An id from the
//! future, or older than the lifetime, is refused. The key can come from config, so that all
//! nodes behind one address accept each other's ids.

use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip::SipHasher24;
use subtle::ConstantTimeEq;

/// Seconds a node's clock may run behind the node that issued an id (NTP-synced nodes).
const MAX_CLOCK_SKEW_SECS: u16 = 2;

/// The longest lifetime an id can have: its 16-bit time field wraps after 65535 seconds, less
/// the skew allowed.
pub const MAX_LIFETIME_SECS: u32 = (u16::MAX - MAX_CLOCK_SKEW_SECS) as u32;

#[derive(Clone)]
pub struct ConnectionIdKey {
    key: [u8; 16],
    lifetime_secs: u16,
}

impl ConnectionIdKey {
    /// `lifetime_secs` is clamped to [`MAX_LIFETIME_SECS`] (config validation refuses more).
    pub fn new(key: [u8; 16], lifetime_secs: u32) -> Self {
        ConnectionIdKey {
            key,
            lifetime_secs: lifetime_secs.min(MAX_LIFETIME_SECS) as u16,
        }
    }

    /// A key from the operating system's random source.
    pub fn random(lifetime_secs: u32) -> std::io::Result<Self> {
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self::new(key, lifetime_secs))
    }

    fn mac(&self, issued_at: u32, ip: IpAddr) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(&issued_at.to_be_bytes());
        match ip.to_canonical() {
            IpAddr::V4(v4) => h.write(&v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        h.finish() & 0x0000_FFFF_FFFF_FFFF
    }

    pub fn issue(&self, now: u32, ip: IpAddr) -> u64 {
        (u64::from(now as u16) << 48) | self.mac(now, ip)
    }

    pub fn is_valid(&self, id: u64, now: u32, ip: IpAddr) -> bool {
        let issued16 = (id >> 48) as u16;
        let age = (now as u16).wrapping_sub(issued16);
        let issued_at = if age <= self.lifetime_secs {
            now.wrapping_sub(u32::from(age))
        } else if issued16.wrapping_sub(now as u16) <= MAX_CLOCK_SKEW_SECS {
            // Issued by a node whose clock is slightly ahead of ours.
            now.wrapping_add(u32::from(issued16.wrapping_sub(now as u16)))
        } else {
            return false;
        };
        let expected = self.mac(issued_at, ip);
        bool::from((id & 0x0000_FFFF_FFFF_FFFF).ct_eq(&expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u32 = 1_800_000_000;

    fn key() -> ConnectionIdKey {
        ConnectionIdKey::new([7; 16], 120)
    }

    #[test]
    fn an_id_is_valid_for_its_lifetime_only() {
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        let id = key().issue(T, ip);
        assert!(key().is_valid(id, T, ip));
        assert!(key().is_valid(id, T + 120, ip));
        assert!(!key().is_valid(id, T + 121, ip));
        // After the 16-bit time wraps, the rebuilt full time differs and the MAC fails.
        assert!(!key().is_valid(id, T + 65536, ip));
    }

    #[test]
    fn an_id_is_bound_to_the_ip_and_the_key() {
        let ip: IpAddr = "::1".parse().unwrap();
        let id = key().issue(T, ip);
        assert!(!key().is_valid(id, T, "::2".parse().unwrap()));
        assert!(!ConnectionIdKey::new([8; 16], 120).is_valid(id, T, ip));
        assert!(!key().is_valid(id ^ 1, T, ip));
    }

    #[test]
    fn ids_from_the_future_are_refused_beyond_the_skew() {
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        assert!(key().is_valid(key().issue(T + 2, ip), T, ip));
        assert!(!key().is_valid(key().issue(T + 10, ip), T, ip));
        assert!(!key().is_valid(key().issue(T + 3600, ip), T, ip));
    }

    #[test]
    fn ipv4_mapped_and_plain_ipv4_are_one_client() {
        let id = key().issue(T, "1.2.3.4".parse().unwrap());
        assert!(key().is_valid(id, T, "::ffff:1.2.3.4".parse().unwrap()));
    }
}

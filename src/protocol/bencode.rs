//! The few bencode primitives a tracker writes.
//!
//! Tracker responses are a handful of fixed-shape dictionaries, so each encoder writes its keys
//! in sorted order by construction, straight into the caller's buffer. Serde-based bencode crates
//! (bt_bencode, serde_bencode) buffer every dictionary value in its own `Vec` and sort through a
//! `BTreeMap`: a dozen allocations per response on the hot path. The tests decode our output
//! with bt_bencode to keep us honest.

/// `i<n>e`
#[inline]
pub fn int(out: &mut Vec<u8>, n: i64) {
    out.push(b'i');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.push(b'e');
}

/// `<len>:<bytes>`
#[inline]
pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(itoa::Buffer::new().format(b.len()).as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// A dictionary key followed by an integer value.
#[inline]
pub fn key_int(out: &mut Vec<u8>, key: &str, n: i64) {
    bytes(out, key.as_bytes());
    int(out, n);
}

/// A dictionary key followed by a byte-string value.
#[inline]
pub fn key_bytes(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    bytes(out, key.as_bytes());
    bytes(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_are_written_as_bencode() {
        let mut out = Vec::new();
        out.push(b'd');
        key_int(&mut out, "a", -3);
        key_bytes(&mut out, "b", b"xy");
        out.push(b'e');
        assert_eq!(out, b"d1:ai-3e1:b2:xye");
    }
}

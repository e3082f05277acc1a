//! AFL target: see `hayate_fuzz::udp_request`.
fn main() {
    afl::fuzz!(|data: &[u8]| hayate_fuzz::udp_request(data));
}

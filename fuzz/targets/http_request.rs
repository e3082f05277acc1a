//! AFL target: see `hayate_fuzz::http_request`.
fn main() {
    afl::fuzz!(|data: &[u8]| hayate_fuzz::http_request(data));
}

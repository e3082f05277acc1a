//! AFL target: see `hayate_fuzz::http_connection`.
fn main() {
    afl::fuzz!(|data: &[u8]| hayate_fuzz::http_connection(data));
}

//! AFL target: see `hayate_fuzz::config`.
fn main() {
    afl::fuzz!(|data: &[u8]| hayate_fuzz::config(data));
}

//! AFL target: see `hayate_fuzz::jwt`.
fn main() {
    afl::fuzz!(|data: &[u8]| hayate_fuzz::jwt(data));
}

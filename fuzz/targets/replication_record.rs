//! AFL target: see `hayate_fuzz::replication_record`.
fn main() {
    afl::fuzz!(|data: &[u8]| hayate_fuzz::replication_record(data));
}

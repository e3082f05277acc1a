//! Every seed, corpus entry and past finding of each target, through the target's body,
//! without AFL: what the fuzzer once found stays fixed, and every input that reached new code
//! is checked against each change (`cargo test` in `fuzz/`, which ci/test.sh runs).

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = 0;
    for dir in ["seeds", "corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("input");
            let result = std::panic::catch_unwind(|| body(&bytes));
            assert!(result.is_ok(), "{target}: {} fails", path.display());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "{target} has no seeds");
}

#[test]
fn udp_request() {
    replay("udp_request", hayate_fuzz::udp_request);
}

#[test]
fn http_request() {
    replay("http_request", hayate_fuzz::http_request);
}

#[test]
fn http_connection() {
    replay("http_connection", hayate_fuzz::http_connection);
}

#[test]
fn config() {
    replay("config", hayate_fuzz::config);
}

#[test]
fn jwt() {
    replay("jwt", hayate_fuzz::jwt);
}

#[test]
fn replication_record() {
    replay("replication_record", hayate_fuzz::replication_record);
}

#[test]
fn the_jwt_seeds_reach_past_the_signature() {
    let seed = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds/jwt")
            .join(name);
        std::fs::read(path).expect("seed")[1..].to_vec()
    };
    assert_eq!(hayate_fuzz::check_token(&seed("valid")), Ok(()));
    let expired = hayate_fuzz::check_token(&seed("expired")).unwrap_err();
    assert_eq!(expired.reason(), "jwt expired");
    let other = hayate_fuzz::check_token(&seed("other-torrent")).unwrap_err();
    assert_eq!(other.reason(), "jwt for another torrent");
}

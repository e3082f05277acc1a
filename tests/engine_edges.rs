//! Edge cases of the engines' buffers and connections, on every engine: more datagrams than
//! receive buffers or send slots, receive buffers exhausted by many connections, clients that
//! close mid-request or half-close after it.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

fn small_buffers(engine: hayate::config::EngineKind) -> hayate::config::Config {
    let mut config = test_config(engine);
    config.workers = 1;
    config.udp.batch_size = 4;
    config.io_uring.udp_recv_buffers = 4;
    config.io_uring.udp_send_slots = 2;
    config.io_uring.http_recv_buffers = 2;
    config.io_uring.http_recv_buffer_bytes = 512;
    config
}

#[test]
fn a_burst_beyond_the_receive_buffers_and_send_slots_leaves_the_tracker_serving() {
    for engine in engines() {
        let t = TestServer::start(small_buffers(engine));
        let burst = UdpClient::new(t.udp(false));
        for i in 0..3000u32 {
            burst.send(&connect_packet(i));
        }
        let mut answered = 0;
        while burst.recv_raw(Duration::from_millis(300)).is_some() {
            answered += 1;
        }
        assert!(answered > 0, "{engine:?}: some of the burst is answered");
        // The multishot receive was re-armed: one request after another is answered.
        let c = UdpClient::new(t.udp(false));
        for i in 0..100 {
            assert!(
                matches!(c.request(&connect_packet(i)), UdpReply::Connect { transaction_id, .. } if transaction_id == i)
            );
        }
    }
}

#[test]
fn many_connections_sharing_few_receive_buffers_all_get_answers() {
    for engine in engines() {
        let t = TestServer::start(small_buffers(engine));
        let target = announce_target(hash(1), 1, 1, 0, "");
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").repeat(10);
        let mut streams: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(t.http(true)).unwrap())
            .collect();
        for s in &mut streams {
            s.write_all(request.as_bytes()).unwrap();
        }
        for s in &mut streams {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            while parse_count(&raw) < 10 {
                match read_some(s, &mut buf) {
                    Ok(0) => panic!("{engine:?}: closed early"),
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("{engine:?}: {e} after {} replies", parse_count(&raw)),
                }
            }
            assert!(parse_http_replies(&raw).iter().all(|r| r.status == 200));
        }
    }
}

fn parse_count(raw: &[u8]) -> usize {
    raw.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count()
}

#[test]
fn clients_that_vanish_mid_request_leave_no_connection_behind() {
    for engine in engines() {
        let mut config = test_config(engine);
        config.workers = 1;
        config.http.max_connections = 3;
        let t = TestServer::start(config);
        for _ in 0..30 {
            let mut s = TcpStream::connect(t.http(false)).unwrap();
            s.write_all(b"GET /announce?info_ha").unwrap();
            drop(s);
        }
        std::thread::sleep(Duration::from_millis(300));
        // All three slots are free again: three held connections are all served.
        let target = announce_target(hash(2), 1, 1, 0, "");
        let mut held: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(t.http(false)).unwrap())
            .collect();
        for s in &mut held {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes())
                .unwrap();
            let mut buf = [0u8; 512];
            let n = read_some(s, &mut buf).unwrap_or(0);
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "{engine:?}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

#[test]
fn a_half_closed_connection_still_gets_its_answer() {
    for engine in engines() {
        let t = TestServer::start(test_config(engine));
        let mut s = TcpStream::connect(t.http(false)).unwrap();
        s.write_all(
            format!(
                "GET {} HTTP/1.1\r\n\r\n",
                announce_target(hash(3), 1, 1, 0, "")
            )
            .as_bytes(),
        )
        .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        assert_eq!(parse_http_replies(&raw).len(), 1, "{engine:?}");
    }
}

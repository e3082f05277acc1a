//! Listening sockets: one UDP socket and one TCP listener per configured address per worker,
//! all bound with SO_REUSEPORT, after checking that no other process holds the address. Port 0 (tests) is resolved by the first bind, so that every
//! worker shares the same ephemeral port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

/// SO_RCVBUF and SO_SNDBUF of HTTP connections (the kernel doubles it for its bookkeeping).
pub const HTTP_SOCKET_BUFFER_BYTES: usize = 32 * 1024;

pub struct WorkerSockets {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

pub struct BoundSockets {
    pub workers: Vec<WorkerSockets>,
    /// The addresses actually bound (ports resolved).
    pub udp_addrs: Vec<SocketAddr>,
    pub http_addrs: Vec<SocketAddr>,
}

pub struct SocketOptions {
    pub workers: usize,
    pub udp_bind: Vec<SocketAddr>,
    pub http_bind: Vec<SocketAddr>,
    pub udp_recv_buffer_bytes: usize,
}

pub fn bind_all(options: &SocketOptions) -> anyhow::Result<BoundSockets> {
    let mut udp_addrs = options.udp_bind.clone();
    let mut http_addrs = options.http_bind.clone();
    for addr in &udp_addrs {
        ensure_unused(*addr, Type::DGRAM)?;
    }
    for addr in &http_addrs {
        ensure_unused(*addr, Type::STREAM)?;
    }
    let mut workers = Vec::with_capacity(options.workers);
    for _ in 0..options.workers {
        let mut sockets = WorkerSockets {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for addr in &mut udp_addrs {
            let socket = bind(*addr, Type::DGRAM, options.udp_recv_buffer_bytes)
                .with_context(|| format!("bind UDP socket on {addr}"))?;
            let socket: UdpSocket = socket.into();
            *addr = socket.local_addr()?;
            sockets.udp.push(socket);
        }
        for addr in &mut http_addrs {
            let socket = bind(*addr, Type::STREAM, 0)
                .with_context(|| format!("bind TCP listener on {addr}"))?;
            // Accepted connections inherit it, which saves a setsockopt per connection.
            // Replies are one write each: Nagle would only delay them.
            socket.set_tcp_nodelay(true)?;
            // Inherited too, and fixed (no autotuning to megabytes): tracker requests and
            // answers are a few hundred bytes, and these bound what a client that sends
            // without reading can park in the kernel, and what one multishot io_uring
            // receive can hand us before a paused connection's receive is cancelled.
            socket.set_recv_buffer_size(HTTP_SOCKET_BUFFER_BYTES)?;
            socket.set_send_buffer_size(HTTP_SOCKET_BUFFER_BYTES)?;
            socket
                .listen(1024)
                .with_context(|| format!("listen on {addr}"))?;
            let listener: TcpListener = socket.into();
            *addr = listener.local_addr()?;
            sockets.tcp.push(listener);
        }
        workers.push(sockets);
    }
    Ok(BoundSockets {
        workers,
        udp_addrs,
        http_addrs,
    })
}

/// Fails when another process holds `addr`. SO_REUSEPORT lets any process of the same user
/// join our sockets' group, and the kernel then splits clients between two trackers with
/// separate swarms; so before we bind, a socket without SO_REUSEPORT tries the address, and
/// only a free address takes it. (TCP's probe sets SO_REUSEADDR, which on Linux still refuses
/// a port another socket listens on, but not one whose old connections wait in TIME_WAIT
/// after a restart.) Port 0 picks a free port anyway.
fn ensure_unused(addr: SocketAddr, kind: Type) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let what = if kind == Type::DGRAM { "UDP" } else { "TCP" };
    let probe = Socket::new(Domain::for_address(addr), kind, None)
        .with_context(|| format!("create a {what} socket to check {addr}"))?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    if kind == Type::STREAM {
        probe.set_reuse_address(true)?;
    }
    // A process that just died with io_uring holds its sockets until the kernel has torn
    // its rings down, which it does a moment later, off the process's exit: a restart at
    // once (systemd's Restart=, a test) waits for that rather than failing.
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    loop {
        match probe.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "{what} {addr} is in use by another process (another hayate?); two \
                         trackers on one port would split its clients between two sets of swarms"
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("bind {what} socket on {addr}")),
        }
    }
}

/// How long a start waits for an address a dead process may still hold (see `ensure_unused`).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn bind(addr: SocketAddr, kind: Type, recv_buffer: usize) -> std::io::Result<Socket> {
    let protocol = if kind == Type::DGRAM {
        Protocol::UDP
    } else {
        Protocol::TCP
    };
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if addr.is_ipv6() {
        // One socket per family: IPv4 clients arrive on the IPv4 socket, never as ::ffff:a.b.c.d.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    if kind == Type::STREAM {
        // Restarts bind despite old connections in TIME_WAIT. Not on UDP, where it would let
        // a socket of any process bind the same port and take our datagrams.
        socket.set_reuse_address(true)?;
    }
    socket.set_nonblocking(true)?;
    if recv_buffer > 0 {
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(recv_buffer);
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// A sockaddr_in or sockaddr_in6, as raw bytes, to a `SocketAddr`.
pub fn sockaddr_to_std(raw: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    let ip = match family {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw.get(4..8)?).ok()?)),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(8..24)?).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_socket_addresses_convert() {
        let v4: socket2::SockAddr = "1.2.3.4:5".parse::<SocketAddr>().unwrap().into();
        // SAFETY: as_ptr points at the SockAddr's sockaddr_storage, zeroed at creation and
        // then written, and len() is at most its size; `v4` outlives `bytes`.
        let bytes =
            unsafe { std::slice::from_raw_parts(v4.as_ptr().cast::<u8>(), v4.len() as usize) };
        assert_eq!(sockaddr_to_std(bytes), Some("1.2.3.4:5".parse().unwrap()));
        let v6: socket2::SockAddr = "[2001:db8::1]:6".parse::<SocketAddr>().unwrap().into();
        // SAFETY: as above, for `v6`.
        let bytes =
            unsafe { std::slice::from_raw_parts(v6.as_ptr().cast::<u8>(), v6.len() as usize) };
        assert_eq!(
            sockaddr_to_std(bytes),
            Some("[2001:db8::1]:6".parse().unwrap())
        );
        assert_eq!(sockaddr_to_std(&[0; 3]), None);
    }
}

//! Listening sockets: one UDP socket and one TCP listener per configured address per worker,
//! all bound with SO_REUSEPORT. Port 0 (tests) is resolved by the first bind, so that every
//! worker shares the same ephemeral port.

use std::net::{SocketAddr, TcpListener, UdpSocket};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

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
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    if recv_buffer > 0 {
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(recv_buffer);
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

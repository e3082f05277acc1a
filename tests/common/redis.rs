//! A real `redis-server` (and Sentinels) for the replication tests, on free loopback ports,
//! started and stopped by PID. Never a mock.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// A Redis on a free port, without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // Tests run in parallel: another may take the free port first, and then this
        // redis-server exits at once. Another port, then.
        for _ in 0..5 {
            if server.spawn() {
                break;
            }
            server.port = free_port();
        }
        wait_for_ping(server.addr());
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts it (again, on the same port) and waits until it answers.
    pub fn restart(&mut self) {
        assert!(
            self.spawn(),
            "redis-server exited at once on port {}",
            self.port
        );
        wait_for_ping(self.addr());
    }

    /// Starts the process; false if it exited at once (its port was taken).
    fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.path().to_str().unwrap(),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        // It binds within milliseconds; one that cannot bind exits just as soon.
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if TcpStream::connect(self.addr()).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        true
    }

    /// Kills it (SIGKILL, by PID) and waits for the process to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// One command, its reply in RESP as text (for checks; our client is the tracker's).
    pub fn command(&self, args: &[&[u8]]) -> String {
        command(self.addr(), args)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one command in RESP and returns what came back within 2 s, as text.
pub fn command(addr: SocketAddr, args: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits (up to 10 s) until Redis at `addr` answers PING.
pub fn wait_for_ping(addr: SocketAddr) {
    // Generous: a loaded 2-core machine starts a process slowly.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if s.write_all(b"PING\r\n").is_ok() {
                let mut line = String::new();
                // (A server with a password answers, without it, that it wants one.)
                if BufReader::new(&mut s).read_line(&mut line).is_ok()
                    && (line.starts_with("+PONG") || line.starts_with("-NOAUTH"))
                {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "redis on {addr} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One master, one replica and three Sentinels watching them as `mymaster`.
pub struct SentinelSetup {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

pub const MASTER_NAME: &str = "mymaster";

impl SentinelSetup {
    pub fn start() -> SentinelSetup {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let dir = tempfile::tempdir().unwrap();
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.path().join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 5000\n\
                         sentinel parallel-syncs {MASTER_NAME} 1\n",
                        dir.path().display(),
                        master.port
                    ),
                )
                .unwrap();
                let child = Command::new("redis-sentinel")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-sentinel runs (apt-get install redis-sentinel)");
                wait_for_ping(SocketAddr::from(([127, 0, 0, 1], port)));
                (port, child)
            })
            .collect();
        let setup = SentinelSetup {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // Ready once every Sentinel knows the replica (it may be promoted) and the others.
        let deadline = Instant::now() + Duration::from_secs(30);
        for &(port, _) in &setup.sentinels {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                let replicas = command(addr, &[b"SENTINEL", b"REPLICAS", MASTER_NAME.as_bytes()]);
                let sentinels = command(addr, &[b"SENTINEL", b"SENTINELS", MASTER_NAME.as_bytes()]);
                if replicas.contains(&setup.replica.port.to_string())
                    && sentinels.matches("127.0.0.1").count() >= 2
                {
                    break;
                }
                assert!(Instant::now() < deadline, "sentinels never saw the replica");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        setup
    }

    /// `host:port` of each Sentinel.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The port the Sentinels name as the master now.
    pub fn master_port(&self) -> Option<u16> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.sentinels[0].0));
        let reply = command(
            addr,
            &[
                b"SENTINEL",
                b"GET-MASTER-ADDR-BY-NAME",
                MASTER_NAME.as_bytes(),
            ],
        );
        reply
            .lines()
            .filter_map(|l| l.trim().parse::<u16>().ok())
            .find(|&p| p > 1024)
    }

    /// Has the Sentinels fail the master over to the replica, and waits until they name it.
    pub fn fail_over(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.sentinels[0].0));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.master_port() != Some(self.replica.port) {
            command(addr, &[b"SENTINEL", b"FAILOVER", MASTER_NAME.as_bytes()]);
            assert!(Instant::now() < deadline, "the failover never happened");
            std::thread::sleep(Duration::from_millis(500));
        }
        // The new master takes writes once it has left replica mode.
        while !self.replica.command(&[b"ROLE"]).contains("master") {
            assert!(Instant::now() < deadline, "the replica never became master");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of three masters (no replicas).
pub struct ClusterSetup {
    pub nodes: Vec<RedisServer>,
}

impl ClusterSetup {
    pub fn start() -> ClusterSetup {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            while !node
                .command(&[b"CLUSTER", b"INFO"])
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "the cluster never came up");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        ClusterSetup { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }
}

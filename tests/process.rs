//! The `hayate` binary as an operator uses it: CLI, config errors, signals, supervision.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hayate::bittorrent::{AnnounceRequest, ClientError};
use hayate::middleware::{Middleware, PreHook, RequestContext};
use hayate::server::Exit;

const BIN: &str = env!("CARGO_BIN_EXE_hayate");

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

#[test]
fn version_help_and_print_config() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("hayate "), "{out}");
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in ["--config", "--print-config", "--check-config"] {
        assert!(out.contains(flag), "{flag} missing from --help");
    }
    let (code, out, _) = run(&["--print-config"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml")).unwrap()
    );
}

#[test]
fn check_config_accepts_good_files_and_names_key_and_line_of_bad_ones() {
    let good = write_config("workers: 1\nhttp:\n  max_connections: 5\n");
    let (code, out, _) = run(&["--check-config", good.path().to_str().unwrap()]);
    assert_eq!((code, out.contains("ok")), (0, true));
    let cases = [
        (
            "log:\n  level: info\nudp:\n  bind_address: x\n",
            "udp.bind_address",
            "line 4",
        ),
        (
            "http:\n  idle_timeout_secs: soon\n",
            "http.idle_timeout_secs",
            "line 2",
        ),
        ("swarm:\n  shards: 3\n", "swarm.shards", "line 2"),
        ("engine: warp\n", "engine", "line 1"),
        (
            "udp:\n  connection_id_secret: short\n",
            "udp.connection_id_secret",
            "line 2",
        ),
    ];
    for (text, key, line) in cases {
        let bad = write_config(text);
        for flag in ["--check-config", "--config"] {
            let (code, _, err) = run(&[flag, bad.path().to_str().unwrap()]);
            assert_eq!(code, 2, "{flag} {text}: {err}");
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(line),
                "{text}: {err}"
            );
        }
    }
    let (code, _, err) = run(&["--config", "/nonexistent/hayate.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/hayate.yaml"), "{err}");
}

#[test]
fn a_config_file_without_end_is_refused_at_the_cap() {
    for flag in ["--check-config", "--config"] {
        let (code, _, err) = run(&[flag, "/dev/zero"]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(
            err.contains("/dev/zero") && err.contains("larger than 16 MiB"),
            "{flag}: {err}"
        );
    }
}

#[test]
fn a_worker_count_past_the_bound_is_a_config_error_not_a_crash() {
    let bad = write_config("workers: 18446744073709551615\n");
    for flag in ["--check-config", "--config"] {
        let (code, _, err) = run(&[flag, bad.path().to_str().unwrap()]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(
            err.contains("`workers` (line 1)") && err.contains("1024"),
            "{flag}: {err}"
        );
    }
}

/// Starts the binary, waits for its "serving" log line, returns it with the line.
// The child goes back to the caller, which stops it and waits for it (clippy cannot see that).
#[allow(clippy::zombie_processes)]
fn spawn(
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Child, String, BufReader<std::process::ChildStderr>) {
    let mut command = Command::new(BIN);
    command.args(args).envs(envs.iter().copied());
    spawn_command(command)
}

/// Starts `command` and waits for "hayate is serving"; returns the log so far.
// The child goes back to the caller, which stops it (clippy cannot see through the return).
#[allow(clippy::zombie_processes)]
fn spawn_command(mut command: Command) -> (Child, String, BufReader<std::process::ChildStderr>) {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).unwrap_or(0);
        seen.push_str(&line);
        if line.contains("hayate is serving") {
            return (child, seen, stderr);
        }
        if read == 0 || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("never served: {seen}");
        }
    }
}

fn stop_within_a_second(mut child: Child, signal: i32) -> i32 {
    let started = Instant::now();
    // SAFETY: kill takes no pointers; the PID is `child`'s, not reaped yet (we wait for it
    // below), so it names that process and no other.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "took {:?}",
                started.elapsed()
            );
            return status.code().unwrap_or(-1);
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            panic!("did not stop");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

const LOOPBACK: &str = "workers: 2\nudp:\n  bind: [\"127.0.0.1:0\", \"[::1]:0\"]\nhttp:\n  bind: [\"127.0.0.1:0\"]\nmetrics:\n  bind: \"127.0.0.1:0\"\n";

#[test]
fn sigterm_and_sigint_stop_it_within_a_second_with_exit_zero() {
    let config = write_config(LOOPBACK);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (child, _, _) = spawn(&["--config", config.path().to_str().unwrap()], &[]);
        assert_eq!(stop_within_a_second(child, signal), 0);
    }
}

#[test]
fn a_random_connection_id_key_is_warned_about_without_printing_it() {
    let config = write_config(LOOPBACK);
    let (child, log, _) = spawn(&["--config", config.path().to_str().unwrap()], &[]);
    assert_eq!(
        log.matches("connection_id_secret is not set").count(),
        1,
        "{log}"
    );
    stop_within_a_second(child, libc::SIGTERM);
}

#[test]
fn json_logs_and_rust_log_override() {
    let config = write_config(&format!("{LOOPBACK}log:\n  level: error\n  format: json\n"));
    let (child, log, _) = spawn(
        &["--config", config.path().to_str().unwrap()],
        &[("RUST_LOG", "info")],
    );
    let serving = log
        .lines()
        .find(|l| l.contains("hayate is serving"))
        .unwrap();
    assert!(
        serving.starts_with('{') && serving.contains("\"level\":\"INFO\""),
        "{serving}"
    );
    stop_within_a_second(child, libc::SIGTERM);
}

#[test]
fn workers_default_to_the_cpus_the_process_may_use() {
    if Command::new("taskset").arg("--version").output().is_err() {
        panic!("taskset (util-linux) is needed for this test");
    }
    let config = write_config(&LOOPBACK.replace("workers: 2\n", ""));
    let mut child = Command::new("taskset")
        .args(["-c", "0", BIN, "--config", config.path().to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("hayate is serving") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0);
    }
    assert!(line.contains("workers=1"), "{line}");
    stop_within_a_second(child, libc::SIGTERM);
}

#[test]
fn with_no_arguments_it_serves_the_embedded_config_on_port_6969() {
    let (child, log, _) = spawn(&[], &[]);
    assert!(
        log.contains("0.0.0.0:6969") && log.contains("[::]:6969"),
        "{log}"
    );
    let addr: SocketAddr = "127.0.0.1:6969".parse().unwrap();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    let reply = http_get(addr, &announce_target(hash(1), 1, 1, 0, ""));
    assert!(reply.failure().is_none());
    stop_within_a_second(child, libc::SIGTERM);
}

struct Explodes;

impl PreHook for Explodes {
    fn name(&self) -> &'static str {
        "explodes"
    }
    fn before_announce(
        &self,
        _: &RequestContext<'_>,
        request: &mut AnnounceRequest,
    ) -> Result<(), ClientError> {
        assert_ne!(request.port, 6666, "a bug in a hook");
        Ok(())
    }
}

#[test]
fn a_worker_that_dies_ends_the_server() {
    for engine in engines() {
        let t = TestServer::start_with(
            test_config(engine),
            Middleware::new(vec![Box::new(Explodes)], vec![]),
        );
        let addr = t.http(false);
        let server = t.server;
        let waiter = std::thread::spawn(move || server.wait());
        // The hook panics on port 6666: that worker dies, and the supervisor must notice.
        let _ = http_raw(
            addr,
            format!(
                "GET {} HTTP/1.0\r\n\r\n",
                announce_target(hash(1), 1, 6666, 0, "")
            )
            .as_bytes(),
        );
        let exit = waiter.join().unwrap();
        assert!(
            matches!(exit, Exit::WorkerDied(ref name) if name.starts_with("worker-")),
            "{exit:?}"
        );
    }
}

/// Makes `io_uring_setup` fail with EPERM in the child, as Docker 25+ and containerd 2 do.
fn deny_io_uring(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // work is sound (another thread may have held a lock, the allocator's say, at the fork):
    // it fills arrays on its stack, calls prctl (async-signal-safe) and makes its error
    // without allocating. The filter lives on its stack until prctl has copied it.
    unsafe {
        command.pre_exec(|| {
            let nr = libc::SYS_io_uring_setup as u32;
            let mut filter = [
                // A = seccomp_data.nr
                libc::sock_filter {
                    code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == io_uring_setup: return EPERM, else allow
                libc::sock_filter {
                    code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 1,
                    k: nr,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: (libc::BPF_RET | libc::BPF_K) as u16,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_mut_ptr(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &raw const program,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn where_seccomp_forbids_io_uring_auto_serves_on_epoll_and_says_why() {
    let config = write_config(LOOPBACK);
    let mut command = Command::new(BIN);
    command
        .args(["--config", config.path().to_str().unwrap()])
        .stderr(Stdio::piped());
    deny_io_uring(&mut command);
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("hayate is serving") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("exited: {log}");
        }
        log.push_str(&line);
    }
    assert_eq!(
        log.matches("io_uring unavailable, using epoll").count(),
        1,
        "{log}"
    );
    assert!(log.contains("EPERM"), "{log}");
    assert!(log.contains("engine=Epoll"), "{log}");
    // And it serves: a UDP connect on the announced port.
    let port: u16 = log
        .split("udp=[127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let client = UdpClient::new(SocketAddr::from(([127, 0, 0, 1], port)));
    assert_ne!(client.connect(), 0);
    stop_within_a_second(child, libc::SIGTERM);
}

#[test]
fn where_seccomp_forbids_io_uring_an_explicit_io_uring_engine_is_an_error() {
    let config = write_config(LOOPBACK);
    let mut command = Command::new(BIN);
    command.args([
        "--config",
        config.path().to_str().unwrap(),
        "--engine",
        "io_uring",
    ]);
    deny_io_uring(&mut command);
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("engine io_uring cannot start") && stderr.contains("EPERM"),
        "{stderr}"
    );
}

#[test]
fn the_engine_in_use_is_logged_and_can_be_chosen_on_the_command_line() {
    let config = write_config(LOOPBACK);
    for (flag, logged) in [("epoll", "engine=Epoll"), ("io_uring", "engine=IoUring")] {
        let (child, log, _) = spawn(
            &[
                "--config",
                config.path().to_str().unwrap(),
                "--engine",
                flag,
            ],
            &[],
        );
        assert!(log.contains(logged), "{log}");
        stop_within_a_second(child, libc::SIGTERM);
    }
}

#[test]
fn sighup_reloads_the_torrent_list_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("torrents.txt");
    std::fs::write(&list, format!("{}\n", "01".repeat(20))).unwrap();
    let config = write_config(&format!(
        "{LOOPBACK}prehooks:\n  - name: torrent_approval\n    options:\n      file: {}\n      check_interval_secs: 3600\n",
        list.display()
    ));
    let (child, log, _stderr) = spawn(&["--config", config.path().to_str().unwrap()], &[]);
    let port: u16 = log
        .split("http=[127.0.0.1:")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let announce = |n: u8| http_get(addr, &announce_target(hash(n), 1, 1, 0, "")).failure();
    assert_eq!(announce(1), None);
    assert_eq!(announce(2).as_deref(), Some("torrent not approved"));
    std::fs::write(&list, format!("{}\n", "02".repeat(20))).unwrap();
    // SAFETY: kill takes no pointers; the PID is `child`'s, not reaped yet (it is stopped
    // below), so it names that process and no other.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while announce(2).is_some() {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the list");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(announce(1).as_deref(), Some("torrent not approved"));
    assert_eq!(
        stop_within_a_second(child, libc::SIGTERM),
        0,
        "still running after SIGHUP"
    );
}

/// The address after `label=[` in the "hayate is serving" line (`http`, `metrics`, ...).
fn logged_addr(log: &str, label: &str) -> SocketAddr {
    let start = log
        .find(&format!("{label}=[127.0.0.1:"))
        .or_else(|| log.find(&format!("{label}=Some(127.0.0.1:")))
        .unwrap_or_else(|| panic!("no {label} address in {log}"));
    let rest = &log[start..];
    let port = rest["127.0.0.1:".len() + rest.find("127.0.0.1:").unwrap()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Collects the rest of a child's stderr on a thread of its own.
fn collect(
    stderr: BufReader<std::process::ChildStderr>,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    log
}

#[test]
fn out_of_descriptors_accepting_backs_off_quietly_and_recovers() {
    let config = write_config(
        "workers: 1\nudp:\n  enabled: false\nhttp:\n  bind: [\"127.0.0.1:0\"]\nmetrics:\n  bind: \"127.0.0.1:0\"\n",
    );
    for engine in ["epoll", "io_uring"] {
        let mut command = Command::new(BIN);
        command.args([
            "--config",
            config.path().to_str().unwrap(),
            "--engine",
            engine,
        ]);
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe work is sound: it calls setrlimit (async-signal-safe) with a
        // pointer to a live local, and makes its error without allocating.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (child, log, stderr) = spawn_command(command);
        assert!(
            log.contains("open-files limit is below what http.max_connections needs"),
            "{engine}: {log}"
        );
        let http = logged_addr(&log, "http");
        let metrics = logged_addr(&log, "metrics");
        let log = collect(stderr);
        // Far more connections than descriptors: the kernel completes them all, the tracker
        // can accept a few dozen, then accept fails with EMFILE for seconds.
        let held: Vec<TcpStream> = (0..200)
            .filter_map(|_| TcpStream::connect(http).ok())
            .collect();
        assert_eq!(held.len(), 200);
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
        // Recovered once descriptors are free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut raw = Vec::new();
            if let Ok(mut s) = TcpStream::connect(http) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = std::io::Write::write_all(
                    &mut s,
                    b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
                );
                let _ = std::io::Read::read_to_end(&mut s, &mut raw);
            }
            if raw.starts_with(b"HTTP/1.1 404") {
                break;
            }
            assert!(Instant::now() < deadline, "{engine}: not serving again");
            std::thread::sleep(Duration::from_millis(100));
        }
        // A pause of 100 ms between tries, and one warning per 10 s: io_uring used to retry
        // at once, 9.75 million warnings in 36 s.
        let failures: u64 = http_get(metrics, "/metrics")
            .body
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(b"hayate_http_accept_errors_total "))
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
            .expect("accept errors counted");
        assert!(
            (1..200).contains(&failures),
            "{engine}: {failures} failed accepts in 3 s"
        );
        // (The tracker's own accepts: the metrics listener says "metrics accept failed".)
        let warnings = log
            .lock()
            .unwrap()
            .matches("hayate::engine: accept failed")
            .count();
        assert!(
            (1..=2).contains(&warnings),
            "{engine}: {warnings} warnings: {}",
            log.lock().unwrap()
        );
        stop_within_a_second(child, libc::SIGTERM);
    }
}

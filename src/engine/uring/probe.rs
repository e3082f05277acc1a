//! Can this process use io_uring as the engine needs it? Checked once at start-up: ring setup
//! with the flags the workers use, every opcode they submit, buffer-ring registration, and a
//! kernel new enough for multishot receive.

use std::io;

use io_uring::{Probe, opcode};

use super::RingSettings;

/// Why io_uring cannot be used here, in one line for the log.
pub fn probe(settings: &RingSettings) -> Result<(), String> {
    let ring = settings
        .build(8)
        .map_err(|e| describe(&e, "io_uring_setup"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| describe(&e, "IORING_REGISTER_PROBE"))?;
    let needed = [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel lacks IORING_OP_{name}"));
        }
    }
    // Multishot accept and receive, buffer rings, and IORING_OP_SEND with a destination
    // address (sendto) came with Linux 5.19 and 6.0.
    let (major, minor) = kernel_version();
    if (major, minor) < (6, 0) {
        return Err(format!(
            "Linux {major}.{minor} lacks multishot receive (needs 6.0)"
        ));
    }
    super::buf_ring::BufRing::new(&ring, 0, 1, 64)
        .map_err(|e| describe(&e, "buffer ring registration"))?;
    Ok(())
}

fn describe(e: &io::Error, what: &str) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "{what}: io_uring is not in this kernel, or a seccomp policy hides it (ENOSYS: \
             podman's default profile does; deploy/seccomp/hayate.json allows it)"
        ),
        Some(libc::EPERM) => format!(
            "{what}: io_uring is forbidden here (EPERM: a seccomp policy such as Docker 25+ or \
             containerd 2 defaults, or sysctl kernel.io_uring_disabled)"
        ),
        Some(libc::ENOMEM) => {
            format!("{what}: not enough lockable memory (ENOMEM: raise RLIMIT_MEMLOCK)")
        }
        Some(libc::EINVAL) => {
            format!("{what}: the kernel rejects the ring's setup flags (EINVAL: too old)")
        }
        _ => format!("{what}: {e}"),
    }
}

fn kernel_version() -> (u32, u32) {
    // SAFETY: utsname is a C struct of char arrays, for which all-zero bytes is a valid
    // value.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct it is given, a live and writable utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return (0, 0);
    }
    let release = name.release.map(|c| c as u8);
    let release = std::ffi::CStr::from_bytes_until_nul(&release)
        .map(|r| r.to_string_lossy())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

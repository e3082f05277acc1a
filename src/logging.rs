//! `tracing` output: level from config unless RUST_LOG is set; human or JSON lines on stderr.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(|| LossyStderr);
    let result = match config.format {
        LogFormat::Human => builder.with_thread_names(true).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already initialised (tests start several servers in one process): keep the first.
    let _ = result;
}

/// stderr that drops what it cannot write: a tracker must outlive its log collector (a closed
/// pipe would otherwise make the log call panic).
struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

//! `tracing` output: level from config unless RUST_LOG is set; human or JSON lines on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Human => builder.with_thread_names(true).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already initialised (tests start several servers in one process): keep the first.
    let _ = result;
}

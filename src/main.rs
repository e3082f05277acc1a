//! The `hayate` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use hayate::clock::Clock;
use hayate::config::{Config, DEFAULT_YAML, EngineKind};
use hayate::middleware::Middleware;
use hayate::server::{self, Exit};

/// A fast, complete BitTorrent tracker: HTTP and UDP, IPv4 and IPv6.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (YAML). Without it, the embedded default config runs.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the default configuration, with the documentation of every key, and exit.
    #[arg(long, conflicts_with_all = ["config", "check_config"])]
    print_config: bool,

    /// I/O engine, overriding the config's `engine`: auto, io_uring or epoll.
    #[arg(long, value_name = "ENGINE")]
    engine: Option<EngineKind>,

    /// Check a configuration file and exit: 0 if it is valid, 2 if not.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

/// Exit code of a config that cannot be used.
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_config {
        print!("{DEFAULT_YAML}");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = cli.check_config {
        return match Config::load(&path)
            .and_then(|c| Middleware::from_config(&c.prehooks, &c.posthooks, &Clock::real()))
        {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hayate: invalid config: {e:#}");
                ExitCode::from(BAD_CONFIG)
            }
        };
    }
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("hayate: invalid config: {e:#}");
                return ExitCode::from(BAD_CONFIG);
            }
        },
        None => Config::embedded(),
    };
    if let Some(engine) = cli.engine {
        config.engine = engine;
    }
    hayate::logging::init(&config.log);
    let clock = Clock::real();
    let middleware = match Middleware::from_config(&config.prehooks, &config.posthooks, &clock) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("hayate: invalid config: {e:#}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    let signals = match server::signals() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    let server = match server::start(&config, clock, middleware) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server.handle_signals(signals) {
        tracing::error!("{e:#}");
        return ExitCode::FAILURE;
    }
    match server.wait() {
        Exit::Stopped => ExitCode::SUCCESS,
        Exit::WorkerDied(_) => ExitCode::FAILURE,
    }
}

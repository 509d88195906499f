//! The `sipshard` binary: parses the command line (DESIGN.md §4), starts the shards and
//! waits for SIGINT/SIGTERM to shut down gracefully.

use clap::Parser;
use sipshard::config::{Cli, Config};
use sipshard::server::Core;
use sipshard::shard::{core_config, Server};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fail(msg: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("sipshard: {msg}");
    std::process::exit(code);
}

fn parse_config() -> Config {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                let _ = e.print();
                std::process::exit(0);
            }
            _ => {
                // One line: clap's first line names the flag and the problem.
                let text = e.to_string();
                let line = text.lines().next().unwrap_or("invalid arguments");
                fail(line.trim_start_matches("error: "), 2);
            }
        },
    };
    cli.into_config().unwrap_or_else(|e| fail(e, 2))
}

fn main() {
    let mut config = parse_config();
    // One address to the world: refuse an address another process serves (with SO_REUSEPORT
    // it would silently share the traffic), and learn the port behind port 0.
    let listen: Vec<std::net::SocketAddr> = config.listen.iter().map(|l| l.addr).collect();
    let bound = sipshard::transport::claim_listen_addrs(&listen).unwrap_or_else(|e| fail(e, 2));
    for (l, addr) in config.listen.iter_mut().zip(bound) {
        l.addr = addr;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| fail(format!("--log '{}': not a valid log filter", config.log), 2));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let auth = sipshard::config::authenticator(&config).unwrap_or_else(|e| fail(e, 2));
    let core_cfg = Arc::new(core_config(&config));
    // The template authenticator stays here; each shard gets its own (shared secret and users).
    let auth = std::sync::Mutex::new(auth);
    let make_core = Arc::new(move |id, stats, local: &[std::net::SocketAddr]| {
        let shard_auth = auth
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.for_shard(id)));
        Core::new(id, core_cfg.clone(), stats, shard_auth, local)
    });
    let server = Server::start(&config, make_core).unwrap_or_else(|e| fail(e, 1));
    let stop = server.stop_flag();
    let metrics = config.metrics.map(|addr| {
        sipshard::metrics::serve(addr, server.registry.clone(), stop.clone())
            .unwrap_or_else(|e| fail(format!("--metrics {addr}: {e}"), 1))
    });
    let listen: Vec<String> = config
        .listen
        .iter()
        .map(|l| format!("udp:{}", l.addr))
        .collect();
    tracing::info!(
        listen = %listen.join(","),
        shards = config.shards,
        io = server.backends.first().copied().unwrap_or("?"),
        domains = %config.domains.join(","),
        auth = config.auth_enabled(),
        "sipshard ready"
    );
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .unwrap_or_else(|e| fail(format!("signal handler: {e}"), 1));
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    server.stop();
    server.join();
    if let Some(m) = metrics {
        if let Some(addr) = config.metrics {
            sipshard::metrics::wake(addr);
        }
        let _ = m.join();
    }
}

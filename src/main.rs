//! The `sipshard` binary: parses the command line (DESIGN.md §4), starts the shards and
//! waits for SIGINT/SIGTERM to shut down gracefully.

use clap::Parser;
use sipshard::auth::UserDb;
use sipshard::config::{Cli, Config};
use sipshard::server::Core;
use sipshard::server::CoreConfig;
use sipshard::shard::{core_config, ReloadUpdate, Server};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fail(msg: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("sipshard: {msg}");
    std::process::exit(code);
}

fn parse_config() -> Config {
    let cli = match Cli::try_parse_from(std::env::args_os()) {
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
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        // `sipshard load SCENARIO TARGET [options]`: the load generator.
        Some("load") => std::process::exit(sipshard::load::run::main(args.collect())),
        // `sipshard ctl COMMAND`: the admin API's client.
        Some("ctl") => std::process::exit(sipshard::admin::ctl::main(args.collect())),
        _ => {}
    }
    let mut config = parse_config();
    // As parsed (port 0 unresolved): what a reload compares the re-read configuration with.
    let parsed = config.clone();
    // One address to the world: refuse an address another process serves (with SO_REUSEPORT
    // it would silently share the traffic), and learn the port behind port 0.
    let listen: Vec<_> = config.listen.iter().map(|l| (l.addr, l.proto)).collect();
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
    let mut users: Option<Arc<UserDb>> = auth.as_ref().map(|a| a.users().clone());
    let core_cfg = Arc::new(core_config(&config));
    let mut running_core = core_cfg.clone();
    // The template authenticator stays here; each shard gets its own (shared secret and users).
    let auth = std::sync::Mutex::new(auth);
    // The bans every shard obeys (`sipshard::security::board`).
    let board: Arc<sipshard::security::board::Board> = Arc::default();
    let security = config.security.clone();
    let shared_board = board.clone();
    // The binding store: every shard's part is loaded before any shard serves. One server
    // per data directory (held until exit).
    let _data_lock = config.store.as_ref().map(|s| {
        sipshard::store::lock(&s.dir)
            .unwrap_or_else(|e| fail(format!("--data-dir {}: {e}", s.dir.display()), 2))
    });
    let mut logs = None;
    let restored: Vec<std::sync::Mutex<Vec<_>>> = match &config.store {
        Some(store) => {
            let started = std::time::Instant::now();
            let shards = config.shards;
            let owner = move |key: &[u8]| sipshard::server::ownership::key_owner(key, shards);
            let now_ms = sipshard::shard::Clock::new().now_ms();
            let (loaded, shard_logs) = sipshard::store::open(store, shards, now_ms, &owner)
                .unwrap_or_else(|e| fail(format!("--data-dir {}: {e}", store.dir.display()), 1));
            tracing::info!(
                dir = %store.dir.display(),
                aors = loaded.aors,
                bindings = loaded.bindings,
                expired = loaded.expired,
                ms = started.elapsed().as_millis() as u64,
                durability = ?store.durability,
                "bindings loaded"
            );
            logs = Some(shard_logs);
            loaded
                .shards
                .into_iter()
                .map(std::sync::Mutex::new)
                .collect()
        }
        None => Vec::new(),
    };
    // The shared store (`--store`): this node's bindings as the store holds them are restored
    // like the local log's (the other nodes' are queued for the shards), waiting at most its
    // load timeout.
    let mut shared_store = None;
    let restored = match &config.shared {
        Some(settings) => {
            let started = std::time::Instant::now();
            let shards = config.shards;
            let owner =
                Arc::new(move |key: &[u8]| sipshard::server::ownership::key_owner(key, shards));
            let (store, loaded) =
                sipshard::store::shared::SharedStore::start(settings, shards, owner)
                    .unwrap_or_else(|e| fail(format!("--store {}: {e}", settings.target), 1));
            if loaded.read {
                tracing::info!(
                    store = %settings.target,
                    node = %settings.node,
                    aors = loaded.own_aors,
                    bindings = loaded.own_bindings,
                    other_nodes_aors = loaded.remote_sets,
                    ms = started.elapsed().as_millis() as u64,
                    "bindings loaded from the shared store"
                );
            }
            shared_store = Some(store);
            loaded
                .shards
                .into_iter()
                .map(std::sync::Mutex::new)
                .collect()
        }
        None => restored,
    };
    let restored = Arc::new(restored);
    let store_lookups = config.shared.is_some();
    let make_core = Arc::new(move |id, stats, local: &[sipshard::sip::Local]| {
        let shard_auth = auth
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.for_shard(id)))
            .map(|a| a.with_lockout(&security, shared_board.clone()));
        let mut core = Core::new(id, core_cfg.clone(), stats, shard_auth, local);
        core.share_board(shared_board.clone());
        if store_lookups {
            core.enable_store_lookups();
        }
        if let Some(part) = restored.get(id) {
            let aors = part
                .lock()
                .map(|mut p| std::mem::take(&mut *p))
                .unwrap_or_default();
            core.restore_bindings(aors, sipshard::shard::Clock::new().now_ms());
        }
        core
    });
    let store = config.store.clone();
    // Call detail records: the writer starts before the shards that feed it.
    let cdr = config.cdr.as_ref().map(|c| {
        let service = sipshard::cdr::CdrService::start(c)
            .unwrap_or_else(|e| fail(format!("--cdr: {e}"), 1));
        let sinks: Vec<String> = c.sinks.iter().map(|s| format!("{s:?}")).collect();
        tracing::info!(sinks = %sinks.join(","), spool = %c.spool.display(), "call detail records on");
        service
    });
    let shared_stats = shared_store.as_ref().map(|s| s.stats.clone());
    let server = Server::start(
        &config,
        make_core,
        store.as_ref().zip(logs),
        shared_store.as_mut(),
        cdr.as_ref(),
    )
    .unwrap_or_else(|e| fail(e, 1));
    // The running dial plan is the shards' and `running`'s: this copy would keep the first
    // one alive after a reload.
    config.routing = Arc::new(sipshard::routing::DialPlan::empty());
    // From here this thread only waits for signals and does reloads: it parses and compiles
    // (a dial plan of millions of routes takes seconds) as SCHED_IDLE, running only when no
    // shard wants its CPU (nice 19 where that is refused).
    // SAFETY: scheduling calls on this thread's own id, with a valid parameter; no memory
    // effects.
    unsafe {
        let tid = libc::gettid();
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        }
    }
    let stop = server.stop_flag();
    let metrics = config.metrics.map(|addr| {
        let mut registry = server.registry.clone();
        registry.board = Some(board.clone());
        registry.cdr = cdr.as_ref().map(|c| c.stats());
        registry.shared = shared_stats.clone();
        sipshard::metrics::serve(addr, registry, stop.clone())
            .unwrap_or_else(|e| fail(format!("--metrics {addr}: {e}"), 1))
    });
    let admin = config.admin.as_ref().map(|path| {
        let mut registry = server.registry.clone();
        registry.board = Some(board.clone());
        sipshard::admin::server::serve(path, server.admin_handle(registry), stop.clone())
            .unwrap_or_else(|e| fail(format!("--admin {}: {e}", path.display()), 1))
    });
    let listen: Vec<String> = config
        .listen
        .iter()
        .map(|l| format!("{}:{}", l.proto.scheme(), l.addr))
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
        signal_hook::consts::SIGHUP,
    ])
    .unwrap_or_else(|e| fail(format!("signal handler: {e}"), 1));
    let mut running = parsed;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            if let Some(new) = reload(&running, &mut users, &mut running_core, &server) {
                running = new;
            }
            continue;
        }
        tracing::info!(signal = sig, "shutting down");
        break;
    }
    server.stop();
    server.join();
    if let Some(s) = shared_store {
        s.stop();
    }
    if let Some(c) = cdr {
        c.shutdown();
    }
    if let Some(a) = admin {
        let _ = a.join();
    }
    if let Some(m) = metrics {
        if let Some(addr) = config.metrics {
            sipshard::metrics::wake(addr);
        }
        let _ = m.join();
    }
}

/// SIGHUP: re-reads the command line's configuration file and users file. The users, the
/// `[registrar]` and `[proxy]` settings and the dial plan take effect at once on every shard; bindings, calls
/// in progress and nonces stay. Settings that need a restart are named in a warning and keep
/// their running values. A file that does not parse changes nothing (an error line says
/// why). Returns the configuration now running, as parsed.
fn reload(
    running: &Config,
    users: &mut Option<Arc<UserDb>>,
    core: &mut Arc<CoreConfig>,
    server: &Server,
) -> Option<Config> {
    let new = Cli::try_parse_from(std::env::args_os())
        .map_err(|e| e.to_string().lines().next().unwrap_or("").to_owned())
        .and_then(|c| c.into_config().map_err(|e| e.to_string()));
    let new = match new {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, keeping the running configuration: {e}");
            return None;
        }
    };
    let mut restart = Vec::new();
    macro_rules! needs_restart {
        ($($field:ident),*) => {$(
            if format!("{:?}", running.$field) != format!("{:?}", new.$field) {
                restart.push(stringify!($field));
            }
        )*};
    }
    needs_restart!(
        listen,
        domains,
        shards,
        mode,
        metrics,
        io,
        allow_unauthenticated,
        queue_capacity,
        nonce_ttl,
        auth_algorithms,
        strict_digest_uri,
        log,
        cdr
    );
    if running.cdr.is_some() && running.proxy.cdr != new.proxy.cdr {
        restart.push("cdr_max_call_minutes");
    }
    if running.auth_enabled() != new.auth_enabled() {
        restart.push("authentication on/off");
    }
    if !restart.is_empty() {
        tracing::warn!(
            "reload: {} changed; these need a restart and keep their running values",
            restart.join(", ")
        );
    }
    let new_users = match (&*users, new.auth_enabled()) {
        (Some(old), true) => match sipshard::config::user_db(&new) {
            Ok(db) => {
                let c = db.changes_from(old);
                tracing::info!(
                    users = db.len(),
                    added = c.added,
                    removed = c.removed,
                    changed = c.changed,
                    "reload: users"
                );
                Some(Arc::new(db))
            }
            Err(e) => {
                tracing::error!("reload failed, keeping the running configuration: {e}");
                return None;
            }
        },
        _ => None,
    };
    let mut updated = (**core).clone();
    if updated.registrar != new.registrar {
        tracing::info!(from = ?updated.registrar, to = ?new.registrar, "reload: [registrar]");
        updated.registrar = new.registrar.clone();
    }
    // Call detail records need their writer, started with the server: on or off, and their
    // maximum call time, stay as they run.
    let mut new = new;
    new.proxy.cdr = updated.proxy.cdr.clone();
    if updated.proxy != new.proxy {
        tracing::info!(from = ?updated.proxy, to = ?new.proxy, "reload: [proxy]");
        updated.proxy = new.proxy.clone();
    }
    {
        // Built off the shards by `into_config` above; the trunks keep what their checks found.
        new.routing.inherit_health(&updated.routing);
        tracing::info!(from = ?updated.routing, to = ?new.routing, "reload: dial plan");
        updated.routing = new.routing.clone();
    }
    let old = std::mem::replace(core, Arc::new(updated));
    if let Some(db) = &new_users {
        *users = Some(db.clone());
    }
    server.reload(ReloadUpdate {
        core: core.clone(),
        users: new_users,
    });
    tracing::info!("reloaded");
    // The old configuration (a dial plan may be hundreds of MB) is freed here, off the
    // shards: once every shard has taken the new one, this is its last reference.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(old);
    // What runs now: the running configuration with the reloadable parts taken from the new
    // one (the restart-only settings named above keep their running values).
    let same_auth = running.auth_enabled() == new.auth_enabled();
    let mut now = running.clone();
    now.registrar = new.registrar;
    now.proxy = new.proxy;
    now.routing = new.routing;
    if same_auth {
        now.users = new.users;
        now.users_file = new.users_file;
    }
    Some(now)
}

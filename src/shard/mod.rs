//! The runtime shell (DESIGN.md §1): one pinned OS thread per shard, each with its own sockets
//! and its own [`Core`]; bounded lock-free hand-off queues between shards; a shared clock.
//! With `shard/runtime.rs` and `transport/`, this is where threads, sockets and time live.

pub mod consolidation;
mod runtime;

use crate::config::{Config, IoBackend};
use crate::metrics::Registry;
use crate::server::{Core, CoreConfig};
use crate::transport::{ShardSockets, Waker};
use crossbeam_queue::ArrayQueue;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A datagram moving to its owner shard (the bytes move with it).
pub struct Handoff {
    pub data: Box<[u8]>,
    pub src: SocketAddr,
    /// Index of the receiving socket (same layout on every shard).
    pub socket: u16,
    pub received: Instant,
    /// When the receiving shard put it on the owner's queue (the queue wait's start).
    pub queued: Instant,
}

/// What other shards need to reach a shard.
pub struct Peer {
    pub queue: ArrayQueue<Handoff>,
    pub waker: Arc<Waker>,
}

/// Milliseconds on one monotonic timeline shared by all shards, anchored at the Unix time
/// of start-up (so nonces issued by one shard mean the same on another).
#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
    epoch_ms: u64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            epoch_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// The clock's reading at `t` (an instant already taken, to spare another clock read).
    #[inline]
    pub fn ms_at(&self, t: Instant) -> u64 {
        self.epoch_ms + t.saturating_duration_since(self.start).as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A reload waiting for the shards (SIGHUP): the new core settings and users. Each shard
/// looks at the generation once per loop round (one relaxed load) and takes the update when
/// it changed.
#[derive(Default)]
pub struct Reload {
    generation: AtomicU64,
    update: Mutex<Option<ReloadUpdate>>,
}

/// What a reload gives every shard.
#[derive(Clone)]
pub struct ReloadUpdate {
    pub core: Arc<CoreConfig>,
    pub users: Option<Arc<crate::auth::UserDb>>,
}

impl Reload {
    fn publish(&self, update: ReloadUpdate) {
        if let Ok(mut u) = self.update.lock() {
            *u = Some(update);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The generation of the latest update (0: none yet).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The latest update.
    pub fn latest(&self) -> Option<ReloadUpdate> {
        self.update.lock().ok()?.clone()
    }
}

/// A running server: the shard threads and what is needed to stop them.
pub struct Server {
    threads: Vec<JoinHandle<()>>,
    /// The binding store's writers (joined after the shards: they write what those left).
    writers: Vec<crate::store::Writer>,
    /// Each shard's admin query channel.
    admin: Vec<crossbeam_channel::Sender<crate::admin::ShardQuery>>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    peers: Arc<Vec<Peer>>,
    reload: Arc<Reload>,
    pub registry: Registry,
    /// Per shard: the local address of each socket (the listen addresses).
    pub local_addrs: Vec<Vec<SocketAddr>>,
    /// Which backend each shard ended up with.
    pub backends: Vec<&'static str>,
}

/// Builds one shard's core from the configuration. Kept separate so the registrar and
/// authenticator can be added in one place.
pub type CoreFactory =
    dyn Fn(usize, Arc<crate::metrics::ShardStats>, &[crate::sip::Local]) -> Core + Send + Sync;

impl Server {
    /// Binds every shard's sockets (so bind errors come back here), then starts the threads.
    /// The listen addresses should have been claimed first
    /// ([`crate::transport::claim_listen_addrs`]: no other server on them, no port 0).
    /// With `store` (the binding store's settings and where each shard's log goes, from
    /// [`crate::store::open`]), each shard gets a writer thread for its binding changes;
    /// with `cdr`, an outlet to the CDR writer.
    pub fn start(
        config: &Config,
        make_core: Arc<CoreFactory>,
        store: Option<(&crate::store::StoreSettings, Vec<crate::store::ShardLog>)>,
        shared: Option<&mut crate::store::shared::SharedStore>,
        cdr: Option<&crate::cdr::CdrService>,
    ) -> io::Result<Server> {
        let n = config.shards;
        use crate::sip::{Local, Proto};
        // The core's socket indexes: the UDP sockets first, then the TCP listeners.
        let listen: Vec<SocketAddr> = config
            .listen
            .iter()
            .filter(|l| l.proto == Proto::Udp)
            .map(|l| l.addr)
            .collect();
        // Then the stream listeners (TCP, TLS, WS, WSS) in the order given.
        let stream_listen: Vec<(SocketAddr, Proto)> = config
            .listen
            .iter()
            .filter(|l| l.proto.is_stream())
            .map(|l| (l.addr, l.proto))
            .collect();
        let mut sockets = Vec::with_capacity(n);
        let mut tcp_listeners = Vec::with_capacity(n);
        for _ in 0..n {
            sockets.push(ShardSockets::bind(&listen)?);
            let mut ls = Vec::with_capacity(stream_listen.len());
            for (i, &(addr, proto)) in stream_listen.iter().enumerate() {
                let listener = crate::transport::tcp::tcp_listener(addr, true).map_err(|e| {
                    io::Error::new(e.kind(), format!("bind {}:{addr}: {e}", proto.scheme()))
                })?;
                let tls = if proto.is_secure() {
                    let cfg = config.tls.clone().ok_or_else(|| {
                        io::Error::other(format!("tls:{addr}: no TLS configuration"))
                    })?;
                    Some(cfg)
                } else {
                    None
                };
                ls.push(crate::transport::tcp::StreamListener {
                    listener,
                    socket: (listen.len() + i) as u16,
                    tls,
                    tls_client: if proto == Proto::Tls {
                        config.tls_client.clone()
                    } else {
                        None
                    },
                    ws: matches!(proto, Proto::Ws | Proto::Wss),
                });
            }
            tcp_listeners.push(ls);
        }
        let registry = Registry::new(n);
        let steering = if n > 1 && config.steering && config.mode != crate::config::Mode::Responder
        {
            steer(&sockets, &listen, &registry)
        } else {
            None
        };
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            peers.push(Peer {
                queue: ArrayQueue::new(config.queue_capacity),
                waker: Arc::new(Waker::new()?),
            });
        }
        let peers = Arc::new(peers);
        let stop = Arc::new(AtomicBool::new(false));
        let reload = Arc::new(Reload::default());
        let clock = Clock::new();
        let local_addrs: Vec<Vec<SocketAddr>> = sockets.iter().map(|s| s.local.clone()).collect();
        let locals: Vec<Vec<Local>> = sockets
            .iter()
            .zip(&tcp_listeners)
            .map(|(s, ls)| {
                let udp = s.local.iter().map(|&a| Local::from(a));
                let tcp = ls
                    .iter()
                    .zip(&stream_listen)
                    .map(|(l, &(addr, proto))| Local {
                        addr: l.listener.local_addr().unwrap_or(addr),
                        proto,
                    });
                udp.chain(tcp).collect()
            })
            .collect();
        let hub = Arc::new(crate::transport::tcp::StreamHub::new(
            peers.iter().map(|p| p.waker.clone()).collect(),
        ));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        // Consolidation needs each shard's epoll set (the recvmmsg backend's); io_uring
        // shards keep their threads.
        let plan = match config.consolidation {
            Some(t) if n > 1 && config.io == IoBackend::Mmsg => Some(Arc::new(
                consolidation::Consolidation::new(t, peers.clone(), steering),
            )),
            _ => None,
        };
        let mut threads = Vec::with_capacity(n);
        let mut backends = Vec::with_capacity(n);
        let mut journals: Vec<Option<crate::store::Journal>> = (0..n).map(|_| None).collect();
        let (admin_tx, mut admin_rx): (Vec<_>, Vec<_>) =
            (0..n).map(|_| crossbeam_channel::bounded(4)).unzip();
        let mut writers = Vec::new();
        let mut remotes: Vec<Option<_>> = (0..n).map(|_| None).collect();
        let mut lookups = None;
        if let Some(shared) = shared {
            let (ends, ask) = shared.attach(peers.iter().map(|p| p.waker.clone()).collect());
            for (id, (journal, remote)) in ends.into_iter().enumerate().take(n) {
                journals[id] = Some(journal);
                remotes[id] = Some(remote);
            }
            lookups = Some(ask);
        }
        if let Some((settings, logs)) = store {
            for (id, log) in logs.into_iter().enumerate().take(n) {
                let (journal, writer) =
                    crate::store::Writer::spawn(id, log, settings, peers[id].waker.clone())?;
                journals[id] = Some(journal);
                writers.push(writer);
            }
        }
        for ((id, socks), ls) in sockets.into_iter().enumerate().zip(tcp_listeners) {
            let waker = peers[id].waker.clone();
            let mut transport = make_transport(config.io, socks, waker)?;
            backends.push(transport.name());
            let streams = if ls.is_empty() {
                None
            } else {
                let t = crate::transport::tcp::TcpShard::new(
                    id,
                    ls,
                    hub.clone(),
                    config.streams,
                    registry.shards[id].clone(),
                )?;
                transport.watch(t.wait_fd())?;
                Some(t)
            };
            let core = make_core(id, registry.shards[id].clone(), &locals[id]);
            let ctx = runtime::ShardContext {
                id,
                core,
                transport,
                peers: peers.clone(),
                stats: registry.shards[id].clone(),
                stop: stop.clone(),
                reload: reload.clone(),
                clock,
                journal: journals[id].take(),
                remote: remotes[id].take(),
                lookups: lookups.clone(),
                admin: admin_rx.remove(0),
                cdr: cdr.map(|c| c.outlet(id)),
                streams,
                first_stream_socket: if stream_listen.is_empty() {
                    usize::MAX
                } else {
                    listen.len()
                },
            };
            let pin = cores.get(id % cores.len().max(1)).copied();
            let plan = plan.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{id}"))
                    .spawn(move || {
                        if let Some(core_id) = pin {
                            core_affinity::set_for_current(core_id);
                        }
                        consolidation::run(runtime::ShardLoop::new(ctx), plan);
                    })?,
            );
        }
        Ok(Server {
            threads,
            writers,
            admin: admin_tx,
            clock,
            stop,
            peers,
            reload,
            registry,
            local_addrs,
            backends,
        })
    }

    /// Asks every shard to stop after its current batch.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in self.peers.iter() {
            p.waker.wake();
        }
    }

    /// Gives every shard new settings and users (SIGHUP); each applies them at its next
    /// loop round (sleeping shards are woken).
    pub fn reload(&self, update: ReloadUpdate) {
        self.reload.publish(update);
        for p in self.peers.iter() {
            p.waker.wake();
        }
    }

    /// What the admin API reaches the shards through; `registry` gives it the counters (and
    /// the ban board, when set).
    pub fn admin_handle(&self, registry: Registry) -> crate::admin::server::AdminHandle {
        crate::admin::server::AdminHandle {
            queries: self.admin.clone(),
            peers: self.peers.clone(),
            registry,
            clock: self.clock,
        }
    }

    /// The flag that stops the server (for signal handlers and the metrics thread).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for every shard thread to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        for w in self.writers {
            w.join();
        }
    }
}

/// The core configuration derived from the server configuration.
pub fn core_config(config: &Config) -> CoreConfig {
    CoreConfig {
        domains: config.domains.clone(),
        local_addrs: config.listen.iter().map(|l| l.addr).collect(),
        shards: config.shards,
        mode: config.mode,
        registrar: config.registrar.clone(),
        proxy: config.proxy.clone(),
        routing: config.routing.clone(),
        responder: config.responder.clone(),
        security: config.security.clone(),
        overload: config.overload,
    }
}

fn make_transport(
    io: IoBackend,
    socks: ShardSockets,
    waker: Arc<Waker>,
) -> io::Result<Box<dyn crate::transport::Transport>> {
    if io == IoBackend::Uring {
        match crate::transport::uring::UringTransport::new(socks, waker.clone()) {
            Ok(t) => return Ok(Box::new(t)),
            Err((socks, e)) => {
                tracing::warn!("io_uring unavailable ({e}); falling back to recvmmsg/sendmmsg");
                return Ok(Box::new(crate::transport::mmsg::MmsgTransport::new(
                    socks, waker,
                )?));
            }
        }
    }
    Ok(Box::new(crate::transport::mmsg::MmsgTransport::new(
        socks, waker,
    )?))
}

/// Attaches the kernel steering program to every UDP listen address's SO_REUSEPORT group
/// (shard `i` bound the `i`-th socket of each, which is the index the program returns).
/// Without it (an old kernel, no CAP_BPF) the kernel's hash of the source spreads the
/// datagrams and the shards hand them on, as before.
/// Returns the program when it steers at least one address (consolidation switches it).
fn steer(
    sockets: &[ShardSockets],
    listen: &[SocketAddr],
    registry: &Registry,
) -> Option<Arc<crate::transport::steering::SteeringProgram>> {
    let program = match crate::transport::steering::SteeringProgram::load(sockets.len()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "kernel steering off (datagrams are spread by source address and handed on): {e}"
            );
            return None;
        }
    };
    let mut steered = 0;
    for (j, addr) in listen.iter().enumerate() {
        let Some(first) = sockets.first().and_then(|s| s.sockets.get(j)) else {
            continue;
        };
        match program.attach(first) {
            Ok(()) => steered += 1,
            Err(e) => tracing::warn!("kernel steering off on udp:{addr}: {e}"),
        }
    }
    registry.shards[0].steered.set(steered);
    tracing::info!(
        addresses = steered,
        instructions = program.len,
        "kernel steering: datagrams go to their owner shard"
    );
    (steered > 0).then(|| Arc::new(program))
}

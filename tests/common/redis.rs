//! Redis servers for the shared-store tests (issue 21): started on free loopback ports with
//! no persistence, stopped by PID when dropped. Without `redis-server` the caller skips (or
//! fails when SIPSHARD_REQUIRE_REDIS=1, as CI sets it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when redis-server and redis-cli are installed; otherwise the test skips visibly
/// (or fails when SIPSHARD_REQUIRE_REDIS=1).
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
        && Command::new("redis-cli").arg("--version").output().is_ok();
    if !found {
        super::skip_or_fail(
            test,
            "redis-server not installed (apt-get install redis-server)",
            "SIPSHARD_REQUIRE_REDIS",
        );
    }
    found
}

/// One redis-server process.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    cluster: bool,
}

impl Redis {
    /// A server on a free port (no snapshot, no append-only file: a restart is empty).
    pub fn start(dir: &Path) -> Redis {
        Self::start_on(super::free_port(), dir, false)
    }

    /// A server on `port`; with `cluster`, a cluster node (cluster-enabled, its own config
    /// file in `dir`).
    pub fn start_on(port: u16, dir: &Path, cluster: bool) -> Redis {
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            port,
            child: None,
            dir,
            cluster,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(self.dir.join("nodes.conf"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends the server `sig` (`STOP` freezes it with its data, `CONT` lets it go on).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} {pid}");
    }

    /// Stops the server (SIGKILL, by PID).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// redis-cli's output for one command.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The number of AORs sipshard keeps on this server.
    pub fn aor_keys(&self) -> usize {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(["--scan", "--pattern", "sipshard:aor:*"])
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of `masters` masters (no replicas) on consecutive free ports.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start(dir: &Path, masters: u16) -> RedisCluster {
        let first = super::free_ports(masters);
        let nodes: Vec<Redis> = (0..masters)
            .map(|i| Redis::start_on(first + i, dir, true))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node must see every slot covered before it takes writes.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes }
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The number of AORs over all masters.
    pub fn aor_keys(&self) -> usize {
        self.nodes.iter().map(Redis::aor_keys).sum()
    }
}

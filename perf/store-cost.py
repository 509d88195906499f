#!/usr/bin/env python3
"""What the binding store costs (issue 18, `sipshard --data-dir DIR --durability batch|sync`),
measured on whole processes (stdlib only).

1. `register`: server CPU per completed REGISTER (no auth) from
   `sipshard load register TARGET --rate R --duration D --json --quiet --sockets 16` against one
   shard (`--shards 1 --listen udp:127.0.0.1:PORT --log warn`) in three variants: no data dir
   (memory), `--data-dir TMP --durability batch` and `--data-dir TMP --durability sync` (a fresh
   data dir per run). Server CPU = utime+stime of all the server's threads from /proc
   (lab.proc_ticks), end minus start of the load run. Rounds alternate the order of variants;
   medians and the ratio to memory.
   Next to sync, in the same rounds and with the same load command: Kamailio's registrar with
   usrloc db_mode=1 (write-through) to SQLite, one UDP worker (perf/kamailio/usrloc-sqlite.cfg,
   a fresh database from Kamailio's own db_sqlite schema per run); its CPU is that of all its
   processes (lab.descendants). --kamailio-memory adds the same config with db_mode=0.
   The shared store (issue 21, `--store redis://HOST:PORT --node NAME --durability batch|sync`,
   no --data-dir), chosen with --variants: `redis-batch` and `redis-sync` run node bench-a
   against a redis-server the script starts per run on a free port (`--port P --bind 127.0.0.1
   --save "" --appendonly no`, its own directory, so every run starts empty; stopped by its PID
   after the run); `redis-batch-peer` is redis-batch plus a second node (`--node bench-b`, its
   own port, --shards 1, same Redis) that receives every change of bench-a by pub/sub and has no
   load of its own. Besides bench-a's CPU per REGISTER: Redis' CPU (utime+stime of the
   redis-server process over the load run) per REGISTER, bench-b's CPU per REGISTER of bench-a,
   and from bench-a's metrics (`--metrics`, scraped before and after the run, outside the CPU
   window) the store's round trips (`sipshard_store_round_trips_total`) and AOR writes
   (`sipshard_store_writes_total`) per completed REGISTER; `sipshard_store_dropped_total` must
   stay 0. --redis-benchmark also runs `redis-benchmark -q -n 200000 -t hset -P 16` once against
   a fresh redis-server (its client shares the machine: a floor for Redis' ceiling).
2. `startup`: --startup-bindings AORs (default 1,000,000) registered into a `--data-dir`
   server (batch, --log info, --metrics) until its `sipshard_bindings` metric has them all;
   its VmRSS and the data directory's size; SIGTERM; then --startup-restarts starts of the same
   data directory, each measuring (a) the time from starting the process until it answers an
   OPTIONS request and (b) the `bindings loaded ... ms=N` of its log. The same start with an
   empty data directory is the reference. The page cache is warm (the data was just written;
   nothing drops caches).

Run under `flock /tmp/bench.lock` (the script re-runs itself under it when the lock is not held
by one of its ancestors). Writes perf/results/DATE-store-cost.{json,md} (--out to change).
"""
import argparse
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'lib'))
import lab  # noqa: E402  (proc_ticks, descendants, log, free_port)

IP = '127.0.0.1'
LOCK = '/tmp/bench.lock'
CLK_TCK = os.sysconf('SC_CLK_TCK')
KAMCFG = os.path.join(HERE, 'kamailio', 'usrloc-sqlite.cfg')
SQLITE_SCHEMA_DIRS = ('/usr/share/kamailio/db_sqlite', '/usr/share/kamailio/sqlite')
SIPSHARD_VARIANTS = ('memory', 'batch', 'sync')
REDIS_VARIANTS = ('redis-batch', 'redis-sync', 'redis-batch-peer')
NODE_A, NODE_B = 'bench-a', 'bench-b'


# ---- the lock ------------------------------------------------------------------------------
def ancestors():
    out, pid = [], os.getpid()
    while pid > 1:
        out.append(pid)
        try:
            with open('/proc/%d/stat' % pid) as f:
                pid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def lock_held_by_ancestor():
    """True when /proc/locks shows an flock(2) write lock on LOCK taken by this process or one
    of its ancestors (`flock /tmp/bench.lock perf/store-cost.py`)."""
    try:
        st = os.stat(LOCK)
    except OSError:
        return False
    mine = set(ancestors())
    with open('/proc/locks') as f:
        for line in f:
            v = line.split()
            # 1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF   (or "->" for waiters)
            if '->' in v or len(v) < 6 or v[1] != 'FLOCK' or v[3] != 'WRITE':
                continue
            try:
                inode = int(v[5].split(':')[2])
                pid = int(v[4])
            except (IndexError, ValueError):
                continue
            if inode == st.st_ino and pid in mine:
                return True
    return False


# ---- helpers (as perf/security-cost.py) ------------------------------------------------------
def start(cmd, log):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, 'w'),
                         stdin=subprocess.DEVNULL)
    return p


def stop(p, wait=5):
    """SIGTERM, then SIGKILL after `wait` s. Returns (seconds to exit, exit code, killed)."""
    if p.poll() is not None:
        return 0.0, p.returncode, False
    t = time.monotonic()
    p.terminate()
    try:
        p.wait(wait)
        return time.monotonic() - t, p.returncode, False
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return time.monotonic() - t, p.returncode, True


def stop_kamailio(p):
    pids = lab.descendants(p.pid)
    _, rc, killed = stop(p, 10)
    if killed:
        for q in pids:
            try:
                os.kill(q, signal.SIGKILL)
            except OSError:
                pass
    return rc


def ticks(pids):
    return sum(lab.proc_ticks(p) for p in pids)


def thread_ticks(pid, names=('store', 'store-sub')):
    """utime+stime of the process' threads named `names`, by name (per-thread /proc stat)."""
    out = dict.fromkeys(names, 0)
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open('/proc/%d/task/%s/comm' % (pid, tid)) as f:
                name = f.read().strip()
            if name not in out:
                continue
            with open('/proc/%d/task/%s/stat' % (pid, tid)) as f:
                st = f.read().rsplit(')', 1)[1].split()
            out[name] += int(st[11]) + int(st[12])
        except OSError:
            pass
    return out


def load(binary, scenario, target, rate, duration=None, extra=()):
    cmd = [binary, 'load', scenario, target, '--rate', str(rate)]
    if duration is not None:
        cmd += ['--duration', str(duration)]
    cmd += ['--json', '--quiet', '--sockets', '16'] + list(extra)
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        r = json.loads(out.stdout)
    except ValueError:
        raise RuntimeError('%s: exit %s, no JSON: %s %s' % (' '.join(cmd), out.returncode,
                                                           out.stdout[-500:], out.stderr[-1500:]))
    r['_cmd'] = ' '.join(cmd)
    return r


def proc_status_kib(pid, key):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def dir_size(path):
    """(apparent bytes, allocated bytes, files) of everything under path."""
    size = alloc = n = 0
    for root, _, files in os.walk(path):
        for fn in files:
            try:
                st = os.lstat(os.path.join(root, fn))
            except OSError:
                continue
            size += st.st_size
            alloc += st.st_blocks * 512
            n += 1
    return size, alloc, n


def scrape(addr, wait_s=10):
    """The metrics of http://addr/metrics, waiting up to wait_s for the endpoint to come up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return scrape_once(addr)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def scrape_once(addr):
    with urllib.request.urlopen('http://%s/metrics' % addr, timeout=5) as r:
        text = r.read().decode()
    m = {}
    for line in text.splitlines():
        if line and not line.startswith('#'):
            k, _, v = line.rpartition(' ')
            try:
                m[k] = float(v)
            except ValueError:
                pass
    return m


def options_probe(port, t_start, limit_s=300, every_s=0.001, proc=None):
    """Sends OPTIONS to IP:port every `every_s` until a response arrives. Returns (seconds from
    t_start (time.monotonic()) to the response's arrival, its status line)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((IP, 0))
    lp = s.getsockname()[1]
    s.settimeout(every_s)
    n = 0
    try:
        while time.monotonic() - t_start < limit_s:
            n += 1
            if proc is not None and n % 100 == 0 and proc.poll() is not None:
                raise RuntimeError('the server exited (%s) before answering OPTIONS'
                                   % proc.returncode)
            msg = ('OPTIONS sip:%s:%d SIP/2.0\r\n'
                   'Via: SIP/2.0/UDP %s:%d;branch=z9hG4bK-store-probe-%d;rport\r\n'
                   'Max-Forwards: 70\r\nFrom: <sip:probe@%s>;tag=probe\r\nTo: <sip:%s:%d>\r\n'
                   'Call-ID: store-probe-%d-%d@%s\r\nCSeq: %d OPTIONS\r\n'
                   'User-Agent: store-cost-probe\r\nContent-Length: 0\r\n\r\n'
                   % (IP, port, IP, lp, n, IP, IP, port, lp, n, IP, n)).encode()
            try:
                s.sendto(msg, (IP, port))
            except OSError:
                pass
            try:
                data = s.recv(65535)
            except (socket.timeout, OSError):
                continue
            t = time.monotonic() - t_start
            return t, data.split(b'\r\n', 1)[0].decode(errors='replace')
        raise RuntimeError('no answer to OPTIONS on %s:%d within %d s' % (IP, port, limit_s))
    finally:
        s.close()


def tail(path, n=15):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-n:])
    except OSError:
        return ''


# ---- Kamailio + SQLite -----------------------------------------------------------------------
def sqlite_schema():
    for d in SQLITE_SCHEMA_DIRS:
        std, ul = os.path.join(d, 'standard-create.sql'), os.path.join(d, 'usrloc-create.sql')
        if os.path.exists(std) and os.path.exists(ul):
            return std, ul
    return None


def kamailio_sqlite_missing():
    """Why Kamailio cannot write usrloc to SQLite here (None: it can)."""
    if not shutil.which('kamailio'):
        return 'no kamailio binary'
    if not (glob.glob('/usr/lib*/kamailio/modules/db_sqlite.so')
            + glob.glob('/usr/lib*/*/kamailio/modules/db_sqlite.so')
            + glob.glob('/usr/local/lib*/kamailio/modules/db_sqlite.so')):
        return ('no db_sqlite.so Kamailio module (apt-get install kamailio-sqlite-modules)')
    if not sqlite_schema():
        return ('no Kamailio SQLite schema (standard-create.sql, usrloc-create.sql) in %s'
                % ' or '.join(SQLITE_SCHEMA_DIRS))
    return None


def make_location_db(path, journal=None):
    """A fresh SQLite database with Kamailio's `version` and `location` tables. journal='wal'
    switches the file to write-ahead logging (persistent in the file; Kamailio's connections
    keep SQLite's default synchronous=FULL, so a commit is still on disk when it returns)."""
    for suffix in ('', '-journal', '-wal', '-shm'):
        try:
            os.unlink(path + suffix)
        except OSError:
            pass
    std, ul = sqlite_schema()
    con = sqlite3.connect(path)
    for fn in (std, ul):
        with open(fn) as f:
            con.executescript(f.read())
    con.commit()
    if journal:
        mode = con.execute('PRAGMA journal_mode=%s' % journal).fetchone()[0]
        if mode.lower() != journal.lower():
            raise RuntimeError('SQLite journal_mode %s refused (%s)' % (journal, mode))
    con.close()


def location_rows(path):
    try:
        con = sqlite3.connect(path)
        n = con.execute('SELECT count(*) FROM location').fetchone()[0]
        con.close()
        return n
    except sqlite3.Error as e:
        return 'error: %s' % e


# ---- Redis (the shared store) ----------------------------------------------------------------
def redis_missing():
    """Why the shared-store variants cannot run here (None: they can)."""
    if not shutil.which('redis-server'):
        return 'no redis-server binary (apt-get install redis-server)'
    return None


def redis_command(port, *words, timeout=2):
    """One command to 127.0.0.1:port in RESP; returns the first reply line (stdlib only)."""
    with socket.create_connection((IP, port), timeout=timeout) as s:
        req = '*%d\r\n' % len(words) + ''.join(
            '$%d\r\n%s\r\n' % (len(w.encode()), w) for w in words)
        s.sendall(req.encode())
        buf = b''
        while b'\r\n' not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.split(b'\r\n', 1)[0].decode(errors='replace')


def start_redis(run_dir):
    """A fresh, empty redis-server on a free port in its own directory. Returns (process, port,
    command); it answers PING when this returns."""
    port = lab.free_port(socket.SOCK_STREAM)
    rdir = os.path.join(run_dir, 'redis')
    os.makedirs(rdir, exist_ok=True)
    cmd = ['redis-server', '--port', str(port), '--bind', IP, '--save', '',
           '--appendonly', 'no', '--dir', rdir]
    p = subprocess.Popen(cmd, stdout=open(os.path.join(rdir, 'redis.log'), 'w'),
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis_command(port, 'PING') == '+PONG':
                break
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            stop(p)
            raise RuntimeError('redis-server did not answer PING on port %d: %s'
                               % (port, tail(os.path.join(rdir, 'redis.log'))))
        time.sleep(0.02)
    if redis_command(port, 'DBSIZE') != ':0':
        stop(p)
        raise RuntimeError('redis-server on port %d is not empty' % port)
    return p, port, cmd


def redis_info(port, section):
    """INFO section as a dict (of str)."""
    with socket.create_connection((IP, port), timeout=2) as s:
        s.sendall(('*2\r\n$4\r\nINFO\r\n$%d\r\n%s\r\n' % (len(section), section)).encode())
        buf = b''
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            head, _, rest = buf.partition(b'\r\n')
            if head.startswith(b'$') and len(rest) >= int(head[1:]):
                break
    text = buf.partition(b'\r\n')[2].decode(errors='replace')
    return dict(line.split(':', 1) for line in text.splitlines() if ':' in line)


def redis_benchmark(tmp):
    """`redis-benchmark -q -n 200000 -t hset -P 16` against a fresh redis-server (its CPU too)."""
    if not shutil.which('redis-benchmark'):
        return {'error': 'no redis-benchmark binary'}
    run_dir = os.path.join(tmp, 'redis-benchmark')
    os.makedirs(run_dir, exist_ok=True)
    p, port, _ = start_redis(run_dir)
    try:
        cmd = ['redis-benchmark', '-h', IP, '-p', str(port), '-q', '-n', '200000', '-t', 'hset',
               '-P', '16']
        t0, w0 = lab.proc_ticks(p.pid), time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.monotonic() - w0
        cpu_s = (lab.proc_ticks(p.pid) - t0) / CLK_TCK
    finally:
        stop(p)
    text = out.stdout.replace('\r', '\n')
    m = re.findall(r'HSET:\s*([\d.]+) requests per second', text)
    ops = float(m[-1]) if m else None
    return {'cmd': ' '.join(cmd), 'output': text.strip().splitlines()[-1] if text.strip() else '',
            'stderr': out.stderr.strip()[-500:], 'hset_per_s': ops, 'wall_s': round(wall, 2),
            'redis_cpu_s': round(cpu_s, 2),
            'redis_cpu_us_per_hset': round(cpu_s * 1e6 / 200000, 3),
            'redis_share_of_a_core': round(cpu_s / max(wall, 1e-9), 2)}


# ---- 1. register -----------------------------------------------------------------------------
def wait_store_connected(proc, maddr, log_path, limit_s=10):
    """Waits until the node's metrics say the shared store answers; returns the metrics."""
    deadline = time.monotonic() + limit_s
    while True:
        m = scrape(maddr)
        if m.get('sipshard_store_connected') == 1:
            return m
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError('node at %s: sipshard_store_connected %s: %s'
                               % (maddr, m.get('sipshard_store_connected'), tail(log_path)))
        time.sleep(0.05)


def store_node_cmd(args, port, mport, rport, node, durability):
    return [args.binary, '--shards', '1', '--listen', 'udp:%s:%d' % (IP, port), '--log', 'warn',
            '--store', 'redis://%s:%d' % (IP, rport), '--node', node,
            '--durability', durability, '--metrics', '%s:%d' % (IP, mport)]


def delta(m1, m0, key):
    return m1.get(key, 0) - m0.get(key, 0)


def register_run(args, tmp, variant, seq):
    """One load run against one server; returns its row."""
    port = lab.free_port()
    run_dir = os.path.join(tmp, 'reg-%03d-%s' % (seq, variant))
    os.makedirs(run_dir)
    log_path = os.path.join(run_dir, 'server.log')
    data_dir = db = None
    rate = args.reg_rate
    redis = peer = None
    shared = variant in REDIS_VARIANTS
    if variant.startswith('kamailio'):
        rate = args.kam_rate or args.reg_rate
        db_mode = 1 if variant == 'kamailio-sqlite' else 0
        db = os.path.join(run_dir, 'location.db')
        if db_mode:
            make_location_db(db, None if args.kam_journal == 'delete' else args.kam_journal)
        cmd = ['kamailio', '-f', KAMCFG, '-DD', '-E', '-m', '256', '-M', '8', '-n', '1',
               '-Y', run_dir, '-A', 'LISTEN=udp:%s:%d' % (IP, port),
               '-A', 'DBURL="sqlite://%s"' % db, '-A', 'DB_MODE=%d' % db_mode]
    elif shared:
        redis, rport, redis_cmd = start_redis(run_dir)
        mport = lab.free_port(socket.SOCK_STREAM)
        cmd = store_node_cmd(args, port, mport, rport, NODE_A,
                             'sync' if variant == 'redis-sync' else 'batch')
    else:
        cmd = [args.binary, '--shards', '1', '--listen', 'udp:%s:%d' % (IP, port),
               '--log', 'warn']
        if variant != 'memory':
            data_dir = os.path.join(run_dir, 'data')
            cmd += ['--data-dir', data_dir, '--durability', variant]
    server = None
    try:
        if variant == 'redis-batch-peer':
            # bench-b first: subscribed before bench-a writes anything
            bport, bmport = lab.free_port(), lab.free_port(socket.SOCK_STREAM)
            peer_cmd = store_node_cmd(args, bport, bmport, rport, NODE_B, 'batch')
            peer_log = os.path.join(run_dir, 'peer.log')
            tb = time.monotonic()
            peer = start(peer_cmd, peer_log)
            options_probe(bport, tb, limit_s=60, every_s=0.01, proc=peer)
            wait_store_connected(peer, '%s:%d' % (IP, bmport), peer_log)
        t_start = time.monotonic()
        server = start(cmd, log_path)
        options_probe(port, t_start, limit_s=60, every_s=0.01, proc=server)
        if shared:
            wait_store_connected(server, '%s:%d' % (IP, mport), log_path)
        time.sleep(0.3)
        if server.poll() is not None:
            raise RuntimeError('%s exited: %s' % (cmd[0], tail(log_path)))
        pids = lab.descendants(server.pid) if db else [server.pid]
        extra = ['--aors', str(args.aors)] if args.aors else []
        if shared:
            m0 = scrape('%s:%d' % (IP, mport))
            b0 = scrape('%s:%d' % (IP, bmport)) if peer else {}
        t0 = ticks(pids)
        s0 = thread_ticks(server.pid) if shared else {}
        r0 = lab.proc_ticks(redis.pid) if redis else 0
        p0 = lab.proc_ticks(peer.pid) if peer else 0
        w0 = time.monotonic()
        r = load(args.binary, 'register', '%s:%d' % (IP, port), rate, args.duration, extra)
        wall = time.monotonic() - w0
        t1 = ticks(pids)
        s1 = thread_ticks(server.pid) if shared else {}
        r1 = lab.proc_ticks(redis.pid) if redis else 0
        p1 = lab.proc_ticks(peer.pid) if peer else 0
        alive = server.poll() is None
        if shared:
            # the writer's last gathering window and bench-b's last message: well within 0.5 s
            time.sleep(0.5)
            m1 = scrape('%s:%d' % (IP, mport))
            b1 = scrape('%s:%d' % (IP, bmport)) if peer else {}
            keys = int(redis_command(rport, 'DBSIZE').lstrip(':'))
            rinfo = redis_info(rport, 'commandstats')
            peer_alive = peer.poll() is None if peer else None
    finally:
        if server is not None:
            if db:
                stop_kamailio(server)
            else:
                stop(server, 30)
        if peer is not None:
            stop(peer, 30)
        if redis is not None:
            stop(redis, 10)
    done = r['completed']
    cpu_s = (t1 - t0) / CLK_TCK
    lat = r.get('latency', {}).get('register_200', {})
    row = {'variant': variant, 'rate': rate, 'duration_s': args.duration,
           'server_cmd': ' '.join(shlex.quote(c) for c in cmd), 'load_cmd': r['_cmd'],
           'started': r['started'], 'completed': done, 'failed': r['failed'],
           'failed_by_status': r.get('failed_by_status', {}),
           'retransmissions': r['retransmissions'], 'timeouts': r.get('timeouts', 0),
           'unexpected': r.get('unexpected', 0), 'rate_completed': r.get('rate_completed'),
           'load_wall_s': round(wall, 2), 'server_cpu_s': round(cpu_s, 3),
           'server_cpu_share_of_a_core': round(cpu_s / max(wall, 1e-9), 3),
           'cpu_us_per_op': round(cpu_s * 1e6 / max(done, 1), 2),
           'latency_us_p50': lat.get('p50'), 'latency_us_p99': lat.get('p99'),
           'server_alive_at_end': alive,
           'server_log_tail': tail(log_path, 5).strip()}
    if data_dir:
        row['data_dir_bytes'] = dir_size(data_dir)[0]
    if db:
        row['processes'] = len(pids)
        if variant == 'kamailio-sqlite':
            row['db_bytes'] = sum(os.path.getsize(p) for p in glob.glob(db + '*'))
            row['location_rows'] = location_rows(db)
    if shared:
        rcpu = (r1 - r0) / CLK_TCK
        trips = delta(m1, m0, 'sipshard_store_round_trips_total')
        writes = delta(m1, m0, 'sipshard_store_writes_total')
        row.update(
            redis_cmd=' '.join(shlex.quote(c) for c in redis_cmd),
            redis_cpu_s=round(rcpu, 3),
            redis_cpu_us_per_op=round(rcpu * 1e6 / max(done, 1), 2),
            # bench-a's store threads alone (the writer, the subscriber): the part of its CPU
            # that the store adds outside the shard, far less noisy than the whole process
            store_thread_cpu_us_per_op=round(
                (s1['store'] - s0['store']) / CLK_TCK * 1e6 / max(done, 1), 2),
            store_sub_thread_cpu_us_per_op=round(
                (s1['store-sub'] - s0['store-sub']) / CLK_TCK * 1e6 / max(done, 1), 2),
            store_round_trips=int(trips), store_writes=int(writes),
            round_trips_per_op=round(trips / max(done, 1), 4),
            writes_per_op=round(writes / max(done, 1), 4),
            store_dropped_total=int(m1.get('sipshard_store_dropped_total', -1)),
            store_queued_at_end=int(m1.get('sipshard_store_queued', -1)),
            store_connected_at_end=int(m1.get('sipshard_store_connected', -1)),
            redis_keys_at_end=keys,
            redis_commandstats={k.replace('cmdstat_', ''): v for k, v in rinfo.items()
                                if k.startswith('cmdstat_')})
        # INFO commandstats: time in the commands themselves (since Redis started; before the
        # load it ran only a few: SCAN, SET, SUBSCRIBE, PING)
        cmd_us = sum(float(dict(kv.split('=', 1) for kv in v.split(',')).get('usec', 0))
                     for k, v in rinfo.items() if k.startswith('cmdstat_'))
        row['redis_cmd_us_per_op'] = round(cmd_us / max(done, 1), 2)
        if 'sipshard_store_dropped_total' not in m1:
            row['store_metric_names'] = sorted(k for k in m1 if 'store' in k)
        if peer is not None:
            pcpu = (p1 - p0) / CLK_TCK
            row.update(
                peer_cmd=' '.join(shlex.quote(c) for c in peer_cmd),
                peer_cpu_s=round(pcpu, 3),
                peer_cpu_us_per_op=round(pcpu * 1e6 / max(done, 1), 2),
                peer_remote_changes=int(delta(b1, b0, 'sipshard_store_remote_changes_total')),
                peer_remote_changes_per_op=round(
                    delta(b1, b0, 'sipshard_store_remote_changes_total') / max(done, 1), 4),
                peer_own_writes=int(delta(b1, b0, 'sipshard_store_writes_total')),
                peer_dropped_total=int(b1.get('sipshard_store_dropped_total', -1)),
                peer_alive_at_end=peer_alive,
                peer_log_tail=tail(peer_log, 5).strip())
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


# ---- 2. startup ------------------------------------------------------------------------------
LOADED_RE = re.compile(r'bindings loaded')


def loaded_line(log_path):
    """The fields of the log's `bindings loaded` line (dict of str), or None."""
    with open(log_path, errors='replace') as f:
        for line in f:
            if LOADED_RE.search(line):
                fields = dict(re.findall(r'\b(\w+)=(\S+)', line))
                fields['_line'] = line.strip()
                return fields
    return None


def start_sipshard_store(args, data_dir, port, mport, log_path, level='info'):
    """--log info for the timed starts (the `bindings loaded` line); the filling server runs
    with --log warn, since info logs every registration."""
    cmd = [args.binary, '--shards', str(args.startup_shards), '--listen',
           'udp:%s:%d' % (IP, port), '--log', level, '--metrics', '%s:%d' % (IP, mport),
           '--data-dir', data_dir, '--durability', 'batch']
    t_start = time.monotonic()
    p = start(cmd, log_path)
    return p, t_start, cmd


def timed_start(args, data_dir, tag, tmp, expect):
    """Starts a server on data_dir; returns its start-up figures (the server is stopped)."""
    port, mport = lab.free_port(), lab.free_port(socket.SOCK_STREAM)
    log_path = os.path.join(tmp, 'startup-%s.log' % tag)
    p, t_start, cmd = start_sipshard_store(args, data_dir, port, mport, log_path)
    try:
        t_ready, status = options_probe(port, t_start, limit_s=600, proc=p)
        fields = loaded_line(log_path) or {}
        m = scrape('%s:%d' % (IP, mport))
        res = {'tag': tag, 'cmd': ' '.join(cmd), 'ready_s': round(t_ready, 4),
               'options_answer': status,
               'loaded_ms': int(fields['ms']) if 'ms' in fields else None,
               'loaded_aors': int(fields['aors']) if 'aors' in fields else None,
               'loaded_bindings': int(fields['bindings']) if 'bindings' in fields else None,
               'loaded_expired': int(fields['expired']) if 'expired' in fields else None,
               'loaded_line': fields.get('_line'),
               'bindings_metric': int(m.get('sipshard_bindings', -1)),
               'rss_kib': proc_status_kib(p.pid, 'VmRSS'),
               'hwm_kib': proc_status_kib(p.pid, 'VmHWM')}
    finally:
        stop_s, rc, killed = stop(p, 60)
    res.update(stop_s=round(stop_s, 3), exit_code=rc, killed=killed)
    if expect is not None and res['bindings_metric'] != expect:
        lab.log('!!! %s: sipshard_bindings %d after the start, expected %d'
                % (tag, res['bindings_metric'], expect))
    return res


def startup(args, tmp):
    n = args.startup_bindings
    data_dir = os.path.join(tmp, 'startup-data')
    port, mport = lab.free_port(), lab.free_port(socket.SOCK_STREAM)
    log_path = os.path.join(tmp, 'startup-fill.log')
    p, t_start, cmd = start_sipshard_store(args, data_dir, port, mport, log_path, 'warn')
    loads = []
    try:
        options_probe(port, t_start, limit_s=60, proc=p)
        rate = args.startup_rate
        have = 0
        for attempt in range(args.startup_attempts):
            w0 = time.monotonic()
            r = load(args.binary, 'register', '%s:%d' % (IP, port), rate, None,
                     ['--total', str(n), '--aors', str(n), '--user', args.startup_user,
                      '--timeout-ms', '5000'])
            time.sleep(0.5)
            have = int(scrape('%s:%d' % (IP, mport)).get('sipshard_bindings', -1))
            loads.append({'rate': rate, 'cmd': r['_cmd'], 'started': r['started'],
                          'completed': r['completed'], 'failed': r['failed'],
                          'retransmissions': r['retransmissions'],
                          'timeouts': r.get('timeouts', 0),
                          'wall_s': round(time.monotonic() - w0, 1),
                          'bindings_metric_after': have})
            lab.log('startup fill at %d/s: %d completed, %d failed, %d retrans; '
                    'sipshard_bindings %d of %d' % (rate, r['completed'], r['failed'],
                                                   r['retransmissions'], have, n))
            if have >= n:
                break
            rate = max(1000, rate // 2)
        if have < n:
            raise RuntimeError('only %d of %d bindings after %d load runs' % (have, n, len(loads)))
        time.sleep(0.5)
        filled = {'cmd': ' '.join(cmd), 'loads': loads, 'bindings_metric': have,
                  'rss_kib': proc_status_kib(p.pid, 'VmRSS'),
                  'hwm_kib': proc_status_kib(p.pid, 'VmHWM'),
                  'server_cpu_s': round(lab.proc_ticks(p.pid) / CLK_TCK, 2)}
        size, alloc, files = dir_size(data_dir)
        filled.update(data_dir_bytes_running=size, data_dir_alloc_bytes_running=alloc,
                      data_dir_files_running=files)
    finally:
        stop_s, rc, killed = stop(p, 60)
    filled.update(stop_s=round(stop_s, 3), exit_code=rc, killed=killed)
    size, alloc, files = dir_size(data_dir)
    filled.update(data_dir_bytes=size, data_dir_alloc_bytes=alloc, data_dir_files=files,
                  data_dir_listing=sorted(
                      '%s %d' % (os.path.relpath(os.path.join(r, f), data_dir),
                                 os.path.getsize(os.path.join(r, f)))
                      for r, _, fs in os.walk(data_dir) for f in fs))
    lab.log('filled: %d bindings, VmRSS %.1f MiB, data dir %.1f MiB in %d files; SIGTERM took '
            '%.2f s (exit %s)' % (have, (filled['rss_kib'] or 0) / 1024, size / 2**20, files,
                                  stop_s, rc))
    restarts, empty = [], []
    for i in range(args.startup_restarts):
        r = timed_start(args, data_dir, 'loaded-%d' % (i + 1), tmp, n)
        lab.log('start with %d bindings: answers OPTIONS after %.3f s; log ms=%s; bindings %d; '
                'VmRSS %.1f MiB' % (n, r['ready_s'], r['loaded_ms'], r['bindings_metric'],
                                    (r['rss_kib'] or 0) / 1024))
        restarts.append(r)
        edir = os.path.join(tmp, 'startup-empty-%d' % (i + 1))
        e = timed_start(args, edir, 'empty-%d' % (i + 1), tmp, 0)
        lab.log('start with an empty data dir: answers OPTIONS after %.3f s; log ms=%s'
                % (e['ready_s'], e['loaded_ms']))
        empty.append(e)
    size, alloc, files = dir_size(data_dir)
    filled.update(data_dir_bytes_after_restarts=size, data_dir_files_after_restarts=files)
    return {'bindings': n, 'shards': args.startup_shards, 'fill': filled,
            'restarts': restarts, 'empty': empty}


# ---- the run ---------------------------------------------------------------------------------
def machine(work):
    cpu = 'unknown'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    fs = 'unknown'
    try:
        fs = subprocess.run(['df', '-T', work], capture_output=True, text=True
                            ).stdout.splitlines()[1].split()[1]
    except (OSError, IndexError):
        pass
    try:
        kam = subprocess.run(['kamailio', '-v'], capture_output=True, text=True
                             ).stdout.splitlines()[0].replace('version: ', '').strip()
    except (OSError, IndexError):
        kam = None
    try:
        rv = subprocess.run(['redis-server', '--version'], capture_output=True, text=True
                            ).stdout.split()
        red = next(w.split('=', 1)[1] for w in rv if w.startswith('v='))
    except (OSError, StopIteration):
        red = None
    return {'cpu': cpu, 'cores': os.cpu_count(), 'kernel': platform.release(),
            'work_dir_fs': fs, 'kamailio': kam, 'sqlite': sqlite3.sqlite_version, 'redis': red,
            'host_load': open('/proc/loadavg').read().split()[:3]}


def med(rows, key, variant):
    v = [r[key] for r in rows if r['variant'] == variant and r.get(key) is not None]
    return statistics.median(v) if v else None


def report(args, doc):
    cmdline = 'flock /tmp/bench.lock perf/store-cost.py' + ''.join(
        ' ' + shlex.quote(a) for a in sys.argv[1:])
    lines = ['# Binding store cost (%s)' % doc['date'], '',
             'Command: `%s`' % cmdline, '',
             'Machine: %s, %d cores, Linux %s; data on %s; Kamailio %s, SQLite %s, Redis %s; '
             'load average at the start %s.' % (
                 doc['machine']['cpu'], doc['machine']['cores'], doc['machine']['kernel'],
                 doc['machine']['work_dir_fs'], doc['machine']['kamailio'],
                 doc['machine']['sqlite'], doc['machine'].get('redis'),
                 ' '.join(doc['machine']['host_load']))]
    reg = doc.get('register')
    if reg is not None:
        variants = doc['variants']
        aors = args.aors or 1000
        lines += ['', '## REGISTER (no auth), server CPU per completed REGISTER', '',
                  'One sipshard shard (`--shards 1 --log warn`) or Kamailio with one UDP worker, '
                  '`sipshard load register TARGET --rate R --duration %d --json --quiet '
                  '--sockets 16%s` (%d distinct AORs `user0000`.., so all but the first %d '
                  'REGISTERs of a run refresh a binding: the store writes every refresh). '
                  'Medians of %d round(s), the order of the variants alternating; failed, '
                  'retransmissions and timeouts are summed over the rounds.' % (
                      args.duration, (' --aors %d' % args.aors) if args.aors else '', aors,
                      aors, args.rounds), '',
                  '| variant | rate/s | CPU µs/op | /memory | completed (median) | failed | '
                  'retrans | timeouts | share of a core | latency p50/p99 µs | runs µs/op |',
                  '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|']
        base = med(reg, 'cpu_us_per_op', 'memory')
        for v in variants:
            rows = [r for r in reg if r['variant'] == v]
            if not rows:
                continue
            us = med(reg, 'cpu_us_per_op', v)
            lines.append('| %s | %d | %.2f | %s | %d | %d | %d | %d | %.0f%% | %s/%s | %s |' % (
                doc['labels'][v], rows[0]['rate'], us,
                '%.2f' % (us / base) if base else '–', med(reg, 'completed', v),
                sum(r['failed'] for r in rows), sum(r['retransmissions'] for r in rows),
                sum(r['timeouts'] for r in rows),
                100 * med(reg, 'server_cpu_share_of_a_core', v),
                med(reg, 'latency_us_p50', v), med(reg, 'latency_us_p99', v),
                ', '.join('%.2f' % r['cpu_us_per_op'] for r in rows)))
        sync = med(reg, 'cpu_us_per_op', 'sync')
        kam = med(reg, 'cpu_us_per_op', 'kamailio-sqlite')
        if sync and kam:
            lines += ['', 'Kamailio (usrloc write-through to SQLite) against sipshard sync: '
                      '%.2f / %.2f µs = %.1fx the CPU per REGISTER.' % (kam, sync, kam / sync)]
        km = med(reg, 'cpu_us_per_op', 'kamailio-memory')
        if kam and km:
            lines += ['', 'Kamailio write-through against Kamailio in memory: %.2f / %.2f µs '
                      '= %.2fx.' % (kam, km, kam / km)]
        if doc.get('kamailio_note'):
            lines += ['', doc['kamailio_note']]
        shared = [v for v in variants if v in REDIS_VARIANTS
                  and any(r['variant'] == v for r in reg)]
        if shared:
            lines += ['', '### The shared store (Redis)', '',
                      'Per completed REGISTER of node A (`--node %s`), medians over the rounds. '
                      'Node A is the sipshard under load (its CPU is in the table above, '
                      'repeated here); Redis = the redis-server process (a fresh one per run); '
                      'node B (`--node %s`, --shards 1, no load of its own) receives every change '
                      'of A by pub/sub. Round trips and writes are the deltas of A\'s '
                      '`sipshard_store_round_trips_total` and `sipshard_store_writes_total` over '
                      'the run (scraped 0.5 s after the load ended); dropped is A\'s '
                      '`sipshard_store_dropped_total` at the end (summed over the runs). '
                      '"Of which in commands": the usec of Redis\' INFO commandstats (HSET, '
                      'PEXPIRE, PUBLISH with its delivery to the subscribers), the rest of '
                      'Redis\' CPU is its event loop and socket I/O per round trip. '
                      '"A\'s store threads": the CPU of node A\'s `store` (writer) and '
                      '`store-sub` (subscriber) threads alone, from their own /proc stat: what '
                      'the store adds outside the shard, far less noisy than the difference of '
                      'two whole-process figures; "/memory" next to it is (memory + that) / '
                      'memory.'
                      % (NODE_A, NODE_B), '',
                      '| variant | node A µs/op | /memory | A\'s store threads µs/op | /memory '
                      '| Redis µs/op | of which in commands '
                      '| node B µs/op | '
                      'A+B+Redis µs/op | round trips/op | REGISTERs per round trip | writes/op | '
                      'B remote changes/op | dropped | runs A / Redis / B µs/op |',
                      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
            for v in shared:
                rows = [r for r in reg if r['variant'] == v]
                a = med(reg, 'cpu_us_per_op', v)
                rd = med(reg, 'redis_cpu_us_per_op', v)
                b = med(reg, 'peer_cpu_us_per_op', v)
                rt = med(reg, 'round_trips_per_op', v)
                total = statistics.median(
                    [r['cpu_us_per_op'] + r['redis_cpu_us_per_op']
                     + r.get('peer_cpu_us_per_op', 0) for r in rows])
                st = statistics.median([r.get('store_thread_cpu_us_per_op', 0)
                                        + r.get('store_sub_thread_cpu_us_per_op', 0)
                                        for r in rows])
                lines.append('| %s | %.2f | %s | %.2f | %s | %.2f | %.2f | %s | %.2f | %.4f | %s '
                             '| %.4f | %s | %d | %s |' % (
                                 v, a, '%.2f' % (a / base) if base else '–', st,
                                 '%.2f' % ((base + st) / base) if base else '–', rd,
                                 med(reg, 'redis_cmd_us_per_op', v),
                                 '%.2f' % b if b is not None else '–', total, rt,
                                 '%.1f' % (1 / rt) if rt else '–', med(reg, 'writes_per_op', v),
                                 ('%.4f' % med(reg, 'peer_remote_changes_per_op', v))
                                 if b is not None else '–',
                                 sum(max(r['store_dropped_total'], 0)
                                     + max(r.get('peer_dropped_total', 0), 0) for r in rows),
                                 '; '.join('%.2f / %.2f%s' % (
                                     r['cpu_us_per_op'], r['redis_cpu_us_per_op'],
                                     (' / %.2f' % r['peer_cpu_us_per_op'])
                                     if 'peer_cpu_us_per_op' in r else '') for r in rows)))
            sb = doc.get('redis_benchmark')
            if sb:
                if sb.get('hset_per_s'):
                    lines += ['', 'Ceiling: `%s` against a fresh redis-server: %s (%.0f HSET/s; '
                              'redis-server %.2f CPU µs per HSET, %.0f%% of a core; the '
                              'benchmark client shares the %d cores).' % (
                                  sb['cmd'], sb['output'], sb['hset_per_s'],
                                  sb['redis_cpu_us_per_hset'],
                                  100 * sb['redis_share_of_a_core'], doc['machine']['cores'])]
                else:
                    lines += ['', 'redis-benchmark failed: %s' % sb]
        bad = [r for r in reg if r['failed'] or r['retransmissions'] or r['timeouts']
               or not r['server_alive_at_end'] or r.get('store_dropped_total', 0) != 0
               or r.get('peer_dropped_total', 0) != 0 or r.get('peer_alive_at_end') is False
               or r.get('store_queued_at_end', 0) != 0]
        kbad = [r for r in bad if r['variant'].startswith('kamailio')]
        if kbad:
            lines += ['', '**Kamailio did not keep up at %d/s** in %d of its runs (see below): '
                      'its CPU per REGISTER is then that of an overloaded server (it also '
                      'handles the retransmissions). `--kam-rate N` runs it at a rate it '
                      'sustains (`--kam-journal wal` for SQLite write-ahead logging).'
                      % (kbad[0]['rate'], len(kbad))]
        if bad:
            lines += ['', 'Runs with failures, retransmissions or timeouts: ' + '; '.join(
                '%s at %d/s (round %d): %d of %d completed, %d failed%s, %d retrans, '
                '%d timeouts, p50 latency %s µs, the load took %.1f s%s%s' % (
                    r['variant'], r['rate'], r['round'], r['completed'], r['started'],
                    r['failed'], (' %s' % r['failed_by_status']) if r['failed_by_status'] else '',
                    r['retransmissions'], r['timeouts'], r['latency_us_p50'], r['load_wall_s'],
                    '' if r['server_alive_at_end'] else ', SERVER DIED',
                    (', store dropped %s (B %s), queued at the end %s, B alive %s' % (
                        r['store_dropped_total'], r.get('peer_dropped_total', '–'),
                        r['store_queued_at_end'], r.get('peer_alive_at_end', '–')))
                    if 'store_dropped_total' in r else '') for r in bad) + '.']
        sizes = ['%s %.1f KiB' % (r['variant'], (r.get('data_dir_bytes') or r.get('db_bytes'))
                                  / 1024)
                 for r in reg if r.get('data_dir_bytes') or r.get('db_bytes')]
        if sizes:
            lines += ['', 'On disk after each run: ' + ', '.join(sizes) + '.']
        lines += ['', 'Servers (round 1; ports vary per run):', '']
        for v in variants:
            rows = [r for r in reg if r['variant'] == v]
            if rows:
                lines.append('- %s: `%s`' % (v, rows[0]['server_cmd']))
                if rows[0].get('peer_cmd'):
                    lines.append('  - node B: `%s`' % rows[0]['peer_cmd'])
                if rows[0].get('redis_cmd'):
                    lines.append('  - Redis: `%s`' % rows[0]['redis_cmd'])
    st = doc.get('startup')
    if st is not None:
        f = st['fill']
        rs, es = st['restarts'], st['empty']
        mready = statistics.median([r['ready_s'] for r in rs])
        mms = statistics.median([r['loaded_ms'] for r in rs if r['loaded_ms'] is not None]
                                or [float('nan')])
        eready = statistics.median([r['ready_s'] for r in es])
        lines += ['', '## Start-up with %s bindings on disk' % format(st['bindings'], ','), '',
                  'Filled by `%s` (--shards %d, batch, --log warn) with %s; %s bindings in '
                  '`sipshard_bindings`; then SIGTERM (%.2f s to exit, code %s) and %d starts '
                  'of the same data directory with --log info (page cache warm), each followed by '
                  'one with an empty data directory.' % (
                      f['loads'][0]['cmd'], st['shards'],
                      ' then '.join('%d/s (%d completed, %d failed, %d retrans)' % (
                          l['rate'], l['completed'], l['failed'], l['retransmissions'])
                          for l in f['loads']),
                      format(f['bindings_metric'], ','), f['stop_s'], f['exit_code'],
                      len(rs)), '',
                  '| | value |', '|---|---:|',
                  '| start until it answers OPTIONS, %s bindings (median of %d) | %.3f s |' % (
                      format(st['bindings'], ','), len(rs), mready),
                  '| `bindings loaded ... ms=` in its log (median) | %s ms |' % (
                      format(int(mms), ',') if mms == mms else '–'),
                  '| start until it answers OPTIONS, empty data dir (median) | %.3f s |' % eready,
                  '| VmRSS after registering them (the filling server) | %.1f MiB |' % (
                      (f['rss_kib'] or 0) / 1024),
                  '| VmRSS after loading them (restarted server, median) | %.1f MiB |' % (
                      statistics.median([r['rss_kib'] or 0 for r in rs]) / 1024),
                  '| data directory after SIGTERM | %.1f MiB in %d files |' % (
                      f['data_dir_bytes'] / 2**20, f['data_dir_files']),
                  '| data directory while running (before SIGTERM) | %.1f MiB |' % (
                      f['data_dir_bytes_running'] / 2**20),
                  '| data directory after the restarts | %.1f MiB in %d files |' % (
                      f['data_dir_bytes_after_restarts'] / 2**20,
                      f['data_dir_files_after_restarts'])]
        lines += ['', 'Each start: ' + '; '.join(
            '%.3f s, ms=%s, %s bindings, %.1f MiB' % (
                r['ready_s'], r['loaded_ms'], r['bindings_metric'], (r['rss_kib'] or 0) / 1024)
            for r in rs) + '.', '', 'Files: ' + ', '.join(f['data_dir_listing']) + '.']
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--binary', default=os.path.join(HERE, '..', 'target', 'release',
                                                      'sipshard'))
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--duration', type=int, default=10)
    ap.add_argument('--reg-rate', type=int, default=10000)
    ap.add_argument('--kam-rate', type=int, default=0,
                    help='REGISTER rate for Kamailio (default: --reg-rate)')
    ap.add_argument('--kam-journal', choices=('delete', 'wal'), default='delete',
                    help="SQLite journal of Kamailio's database (default delete, SQLite's and "
                    "Kamailio's default)")
    ap.add_argument('--aors', type=int, default=0,
                    help='distinct AORs per register run (default: sipshard load\'s 1000)')
    ap.add_argument('--no-kamailio', action='store_true')
    ap.add_argument('--kamailio-memory', action='store_true',
                    help='also Kamailio with the same config and usrloc db_mode=0')
    ap.add_argument('--only', choices=('register', 'startup'))
    ap.add_argument('--variants', default=None,
                    help='comma-separated list of memory,batch,sync,kamailio-sqlite,'
                    'kamailio-memory,redis-batch,redis-sync,redis-batch-peer for the register '
                    'part, run in this order, reversed every other round (default: the first four; the redis '
                    'ones only when named)')
    ap.add_argument('--redis-benchmark', action='store_true',
                    help='also run `redis-benchmark -q -n 200000 -t hset -P 16` once against a '
                    'fresh redis-server (a ceiling for the shared store)')
    ap.add_argument('--startup-bindings', type=int, default=1000000)
    ap.add_argument('--startup-rate', type=int, default=20000,
                    help='REGISTER rate filling the store (halved for each further attempt)')
    ap.add_argument('--startup-attempts', type=int, default=3)
    ap.add_argument('--startup-restarts', type=int, default=3)
    ap.add_argument('--startup-shards', type=int, default=1)
    ap.add_argument('--startup-user', default='u{n:07}', help='AOR user pattern of the fill')
    ap.add_argument('--work-dir', default=None,
                    help='where data dirs and databases go (default: a new dir in /tmp)')
    ap.add_argument('--keep', action='store_true', help='keep the work dir')
    ap.add_argument('--out', default=None,
                    help='results path without .md/.json (default perf/results/DATE-store-cost)')
    args = ap.parse_args()
    if not lock_held_by_ancestor():
        if os.environ.get('STORE_COST_UNDER_FLOCK'):
            sys.exit('%s: still not holding %s under flock(1)' % (sys.argv[0], LOCK))
        lab.log('re-running under flock %s' % LOCK)
        os.execvpe('flock', ['flock', '--verbose', LOCK, sys.executable, os.path.abspath(__file__)]
                   + sys.argv[1:], dict(os.environ, STORE_COST_UNDER_FLOCK='1'))
    args.binary = os.path.abspath(args.binary)
    tmp = args.work_dir or tempfile.mkdtemp(prefix='sipshard-store-cost-')
    os.makedirs(tmp, exist_ok=True)
    day = datetime.date.today().isoformat()
    doc = {'date': day, 'command': 'flock /tmp/bench.lock perf/store-cost.py ' + ' '.join(
        shlex.quote(a) for a in sys.argv[1:]), 'args': vars(args), 'machine': machine(tmp),
        'binary_version': subprocess.run([args.binary, '--version'], capture_output=True,
                                         text=True).stdout.strip()}
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    started = time.time()
    try:
        if args.only in (None, 'register'):
            variants = list(SIPSHARD_VARIANTS)
            kj = '' if args.kam_journal == 'delete' else ', journal_mode=%s' % args.kam_journal
            labels = {'memory': 'sipshard, memory (no --data-dir)',
                      'batch': 'sipshard --data-dir --durability batch',
                      'sync': 'sipshard --data-dir --durability sync',
                      'kamailio-sqlite': 'Kamailio, usrloc db_mode=1 to SQLite%s (1 worker)'
                                         % kj,
                      'kamailio-memory': 'Kamailio, usrloc db_mode=0, memory (1 worker)',
                      'redis-batch': 'sipshard --store redis --durability batch',
                      'redis-sync': 'sipshard --store redis --durability sync',
                      'redis-batch-peer': 'sipshard --store redis --durability batch, '
                                          '+ node B'}
            if not args.no_kamailio:
                why = kamailio_sqlite_missing()
                if why is None:
                    variants.append('kamailio-sqlite')
                else:
                    doc['kamailio_note'] = ('Kamailio with SQLite not measured (%s): Kamailio '
                                            'in memory (db_mode=0) instead.' % why)
                    lab.log(doc['kamailio_note'])
                if why is not None or args.kamailio_memory:
                    variants.append('kamailio-memory')
            if args.variants:
                want = args.variants.split(',')
                bad = [v for v in want if v not in labels]
                if bad:
                    sys.exit('--variants: unknown %s' % ', '.join(bad))
                if 'kamailio-sqlite' in want and kamailio_sqlite_missing():
                    sys.exit('--variants kamailio-sqlite: %s' % kamailio_sqlite_missing())
                if any(v in REDIS_VARIANTS for v in want) and redis_missing():
                    sys.exit('--variants %s: %s' % (','.join(v for v in want
                                                             if v in REDIS_VARIANTS),
                                                    redis_missing()))
                variants = want
            doc['variants'], doc['labels'] = variants, labels
            if args.redis_benchmark:
                if redis_missing():
                    sys.exit('--redis-benchmark: %s' % redis_missing())
                doc['redis_benchmark'] = redis_benchmark(tmp)
                lab.log('redis-benchmark: %s (redis-server %.0f%% of a core)' % (
                    doc['redis_benchmark'].get('output') or doc['redis_benchmark'],
                    100 * doc['redis_benchmark'].get('redis_share_of_a_core', 0)))
            reg = doc['register'] = []
            seq = 0
            for rnd in range(args.rounds):
                order = variants if rnd % 2 == 0 else variants[::-1]
                for v in order:
                    seq += 1
                    r = register_run(args, tmp, v, seq)
                    r['round'] = rnd + 1
                    reg.append(r)
                    lab.log('round %d %-16s %.2f us/op at %d/s (%d done, %d failed, %d retrans, '
                            '%d timeouts, %.0f%% of a core, p50/p99 %s/%s us)' % (
                                rnd + 1, v, r['cpu_us_per_op'], r['rate'], r['completed'],
                                r['failed'], r['retransmissions'], r['timeouts'],
                                100 * r['server_cpu_share_of_a_core'], r['latency_us_p50'],
                                r['latency_us_p99']))
                    if v in REDIS_VARIANTS:
                        lab.log('      redis %.2f us/op, %.3f round trips/op, %.3f writes/op, '
                                'dropped %d%s' % (
                                    r['redis_cpu_us_per_op'], r['round_trips_per_op'],
                                    r['writes_per_op'], r['store_dropped_total'],
                                    ('; node B %.2f us/op, %.3f remote changes/op' % (
                                        r['peer_cpu_us_per_op'],
                                        r['peer_remote_changes_per_op']))
                                    if 'peer_cpu_us_per_op' in r else ''))
        if args.only in (None, 'startup'):
            doc['startup'] = startup(args, tmp)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    doc['wall_min'] = round((time.time() - started) / 60, 1)
    text = report(args, doc)
    print(text)
    out = args.out or os.path.join(HERE, 'results', '%s-store-cost' % day)
    with open(out + '.md', 'w') as f:
        f.write(text)
    with open(out + '.json', 'w') as f:
        json.dump(doc, f, indent=1)
    lab.log('wrote %s.md and .json (%.1f min)' % (out, doc['wall_min']))


if __name__ == '__main__':
    main()

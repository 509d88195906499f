#!/usr/bin/env python3
"""The performance lab behind perf/compare (Python 3 standard library only).

For each scenario (reg, reg-auth, calls, trunk-calls) and target (sipshard --shards 1,
sipshard --shards 2, Kamailio, UDP echo) it searches the highest SIPp rate with zero failed
calls and zero retransmissions (doubling, then bisection, then one confirmation, as in the Kamailio
baseline's lib/common.sh), and measures per trial: server CPU per operation (utime+stime of
all the server's threads/processes from /proc, end minus start, over completed operations),
peak RSS (VmHWM, summed over Kamailio's processes), UdpRcvbufErrors delta, SIPp's CPU, and for
sipshard the in-server latency quantiles, cross-shard hand-offs and its own counters, which
must agree with SIPp's or the trial fails loudly.

Every trial (server start .. stop, with SIPp load) holds an exclusive flock(2) on
/tmp/bench.lock, the same lock `flock /tmp/bench.lock ...` takes, so no two loads overlap.

Usage (normally through perf/compare): lab.py --bin SIPSHARD --echo UDP_ECHO [--quick]
    [--command TEXT] SCENARIO...
"""
import argparse
import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

PERF = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PERF)
SCEN = os.path.join(PERF, 'scenarios')
KAMCFG = os.path.join(PERF, 'kamailio')
RESULTS = os.environ.get('PERF_RESULTS') or os.path.join(PERF, 'results')

IP = '127.0.0.1'
PORT = int(os.environ.get('PERF_PORT', 5070))          # every server listens here
SIPP_PORT = int(os.environ.get('PERF_SIPP_PORT', 5072))
UAS_PORT = int(os.environ.get('PERF_UAS_PORT', 5080))
METRICS = os.environ.get('PERF_METRICS', '127.0.0.1:9470')
LOCK = os.environ.get('PERF_LOCK', '/tmp/bench.lock')
WORK = os.environ.get('PERF_WORK', '/tmp/sipshard-perf')
TRANSPORT = os.environ.get('PERF_TRANSPORT', 'un')     # SIPp -t: un = one socket per call
# SIPp over TCP (t1: one connection, tn: one per call): the servers listen on TCP too
TCP = TRANSPORT.startswith('t')
# PERF_TLS=1 (with PERF_TRANSPORT=t1/tn): the servers listen on TLS too (TLS_PORT, one EC P-256
# certificate made with openssl for both; Kamailio's tls module, OpenSSL), and SIPp, which has
# no TLS in Debian, reaches it through stunnel in client mode (STUNNEL_PORT). stunnel's CPU is
# neither server's.
TLS = os.environ.get('PERF_TLS') == '1' and TCP
# PERF_TLS_RESUME=0: stunnel never resumes a TLS session (with -t tn every REGISTER then costs
# a full handshake); by default it resumes from its cache.
TLS_RESUME = os.environ.get('PERF_TLS_RESUME', '1') != '0'
TLS_PORT = PORT + 3
STUNNEL_PORT = PORT + 4
KAM_CHILDREN = int(os.environ.get('PERF_KAM_CHILDREN', 2))
KAM_SHM_MB = int(os.environ.get('PERF_KAM_SHM_MB', 1024))
# Kamailio probes its UDP receive buffer up to maxbuffer (256 KiB by default); sipshard asks for
# 8 MiB per socket. Give Kamailio the same ceiling (bounded by net.core.rmem_max, which the run
# raises to 16 MiB); PERF_KAM_MAXBUFFER=0 keeps Kamailio's default as in the baseline.
KAM_MAXBUFFER = int(os.environ.get('PERF_KAM_MAXBUFFER', 8388608))
# Run sipshard as this user (e.g. nobody): then its 8 MiB buffer request is clamped to
# net.core.rmem_max/wmem_max as for an ordinary deployment (as root it forces the size).
RUN_AS = os.environ.get('PERF_RUN_AS', '')
# Extra sipshard flags for experiments, e.g. PERF_SIPSHARD_ARGS="--io uring".
EXTRA_ARGS = os.environ.get('PERF_SIPSHARD_ARGS', '').split()
SIPP_BUF = 4194304
MAX_RATE = int(os.environ.get('PERF_MAX_RATE', 64000))
MIN_STEP = 50
MIN_ACHIEVED_PCT = 95
CLK_TCK = os.sysconf('SC_CLK_TCK')

# Per scenario: SIPp scenario, Kamailio config, echo scenario, the fixed moderate rate (also
# the search's first rate), SIP requests and final responses per call for the counter checks.
SCENARIOS = {
    'reg': dict(title='REGISTER, no auth (1 transaction per op)', sipp='reg.xml',
                kam='registrar.cfg', echo='echo.xml', fixed=5000, pairs=1),
    'reg-auth': dict(title='REGISTER + digest (401 then 200: 2 transactions per op)',
                     sipp='reg-auth.xml', kam='registrar-auth.cfg', echo='echo.xml',
                     fixed=3000, pairs=2),
    'calls': dict(title='call through a stateful record-routing proxy '
                        '(INVITE/100/180/200/ACK/BYE/200, 1 callee)',
                  sipp='uac.xml', kam='proxy.cfg', echo=None, fixed=1000, pairs=7),
    # the same call to a number that a route sends to a trunk (the SIPp UAS, not registered):
    # sipshard --config with one [[trunk]] and one [[route]], Kamailio's dispatcher module
    'trunk-calls': dict(title='call through a trunk route (the same call to +4930123456, '
                              'routed by prefix to a gateway: sipshard [[route]], Kamailio '
                              'dispatcher)',
                        sipp='uac.xml', kam='trunk.cfg', echo=None, fixed=1000, pairs=7),
}
# scenarios with a SIPp UAS behind the server (no echo target)
CALLS = ('calls', 'trunk-calls')
# the number trunk-calls dials and the route prefix that catches it
TRUNK_NUMBER = '+4930123456'
TRUNK_PREFIX = '+49'
# extra Kamailio flags for experiments, e.g. PERF_KAM_ARGS="-A DS_DOMAIN" (trunk.cfg rewrites
# the Request-URI's host:port to the gateway's instead of only setting the destination)
KAM_EXTRA_ARGS = os.environ.get('PERF_KAM_ARGS', '').split()
TARGETS = ['sipshard-1', 'sipshard-2', 'kamailio', 'echo']
HOLD_MS = 100
# PERF_GENERATOR=sipshard: `sipshard load` is the caller instead of SIPp (and, for the call
# scenarios, a `sipshard --mode responder` the callee instead of the SIPp UAS), so that the
# highest rates are the servers' and not SIPp's. Not for the echo target.
GENERATOR = os.environ.get('PERF_GENERATOR', 'sipp')


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


# ---- /proc ------------------------------------------------------------------------------
def proc_ticks(pid):
    """utime+stime of a whole process (all its threads, live and exited), in clock ticks."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            rest = f.read().rsplit(')', 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def thread_ticks(pid, name):
    """utime+stime of the threads of `pid` named `name` (their comm), in clock ticks."""
    total = 0
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return 0
    for tid in tids:
        try:
            with open('/proc/%d/task/%s/comm' % (pid, tid)) as f:
                if f.read().strip() != name:
                    continue
            with open('/proc/%d/task/%s/stat' % (pid, tid)) as f:
                rest = f.read().rsplit(')', 1)[1].split()
            total += int(rest[11]) + int(rest[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def descendants(pid):
    kids = {}
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % d) as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [pid], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def vm_hwm_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_busy_ticks():
    """All CPUs' busy time (user+nice+system+irq+softirq+steal) in ticks, from /proc/stat."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def udp_rcvbuf_errors():
    with open('/proc/net/snmp') as f:
        rows = [l.split() for l in f if l.startswith('Udp:')]
    return int(rows[1][rows[0].index('RcvbufErrors')])


def udp_port_busy(port):
    want = ':%04X' % port
    for fn in ('/proc/net/udp', '/proc/net/udp6'):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    if line.split()[1].endswith(want):
                        return True
        except OSError:
            pass
    return False


def free_port(kind=socket.SOCK_DGRAM):
    """A port on IP the kernel just had free."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind((IP, 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---- metrics -------------------------------------------------------------------------------
HALT_POLL = '/sys/module/haltpoll/parameters/guest_halt_poll_ns'


class halt_poll:
    """Sets a virtual machine guest's halt polling (Linux cpuidle-haltpoll: an idle vCPU polls
    this many ns before it halts) for the duration of a `with` block and restores it after;
    `None` leaves it alone. On the 2-core VM these figures come from, a vCPU that halted
    costs the thread it wakes ~22 µs of CPU and ~35 µs of latency (a cross-CPU pipe
    ping-pong: 52 µs of CPU per round trip with 0 ns, 8 µs with 200,000 ns), which a server
    that sleeps between bursts pays per wake-up. `.value` is the setting in effect (None
    where the machine has no such knob)."""

    def __init__(self, ns):
        self.ns, self.old, self.value = ns, None, None

    def __enter__(self):
        try:
            with open(HALT_POLL) as f:
                self.old = f.read().strip()
            self.value = int(self.old)
            if self.ns is not None:
                with open(HALT_POLL, 'w') as f:
                    f.write(str(self.ns))
                self.value = self.ns
        except (OSError, ValueError):
            pass
        return self

    def __exit__(self, *exc):
        if self.ns is not None and self.old is not None:
            with open(HALT_POLL, 'w') as f:
                f.write(self.old)
        return False


def scrape(addr=None):
    """The metrics of http://ADDR/metrics (default METRICS) as {series: value}."""
    with urllib.request.urlopen('http://%s/metrics' % (addr or METRICS), timeout=5) as r:
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


# ---- servers ----------------------------------------------------------------------------
class Server:
    def __init__(self, target, scenario, total, rundir, bins):
        self.target, self.scenario, self.total, self.rundir = target, scenario, total, rundir
        self.bins = bins
        self.proc = None
        self.pids = []

    def start(self):
        out = open(os.path.join(self.rundir, 'server.log'), 'w')
        t = self.target
        if t.startswith('sipshard'):
            cmd = [self.bins['sipshard'], '--listen', 'udp:%s:%d' % (IP, PORT),
                   '--domain', IP, '--shards', t.split('-')[1], '--metrics', METRICS,
                   '--log', 'warn']
            if TCP:
                cmd += ['--listen', 'tcp:%s:%d' % (IP, PORT)]
            if TLS:
                cert, key = tls_files()
                cmd += ['--listen', 'tls:%s:%d' % (IP, TLS_PORT), '--tls-cert', cert,
                        '--tls-key', key]
            if self.scenario == 'reg-auth':
                cmd += ['--users', users_txt(self.total), '--auth-algorithms', 'md5']
            if self.scenario == 'trunk-calls':
                cmd += ['--config', trunk_toml(self.rundir)]
            cmd += EXTRA_ARGS
            if RUN_AS:
                import pwd
                cmd = ['setpriv', '--reuid', RUN_AS, '--regid', str(pwd.getpwnam(RUN_AS).pw_gid),
                       '--clear-groups',
                       '--inh-caps=-all', '--bounding-set=-all'] + cmd
        elif t == 'kamailio':
            cmd = ['kamailio', '-f', os.path.join(KAMCFG, SCENARIOS[self.scenario]['kam']),
                   '-DD', '-E', '-m', str(KAM_SHM_MB), '-M', '8', '-n', str(KAM_CHILDREN),
                   '-Y', self.rundir, '-A', 'LISTEN=udp:%s:%d' % (IP, PORT)]
            if KAM_MAXBUFFER:
                cmd += ['-A', 'UDP_MAXBUFFER=%d' % KAM_MAXBUFFER]
            if TCP:
                cmd += ['-A', 'TCP_LISTEN=tcp:%s:%d' % (IP, PORT)]
            if TLS:
                cmd += ['-A', 'TLS_LISTEN=tls:%s:%d' % (IP, TLS_PORT),
                        '-A', 'TLS_CFG="%s"' % kamailio_tls_cfg()]
            if self.scenario == 'trunk-calls':
                cmd += ['-A', 'DS_LIST="%s"' % dispatcher_list(self.rundir)]
            cmd += KAM_EXTRA_ARGS
        else:
            cmd = [self.bins['echo'], '%s:%d' % (IP, PORT)]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError('%s exited at start: %s' % (t, tail(out.name)))
            if udp_port_busy(PORT) and self.ready():
                time.sleep(0.3)
                self.pids = descendants(self.proc.pid)
                return
            time.sleep(0.1)
        raise RuntimeError('%s did not start within 60 s: %s' % (t, tail(out.name)))

    def ready(self):
        if self.target.startswith('sipshard'):
            try:
                scrape()
                return True
            except OSError:
                return False
        if self.target == 'kamailio':
            return len(descendants(self.proc.pid)) >= KAM_CHILDREN + 2
        return True

    def ticks(self):
        return sum(proc_ticks(p) for p in self.pids)

    def hwm_kib(self):
        return sum(vm_hwm_kib(p) for p in self.pids)

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            for p in self.pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.wait()


def tail(path, n=15):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-n:])
    except OSError:
        return ''


# ---- users files -----------------------------------------------------------------------
def users_csv(n):
    """SEQUENTIAL SIPp injection file: u0000000;secret; ... (one new AOR per call)."""
    path = os.path.join(WORK, 'users-%d.csv' % n)
    if not os.path.exists(path):
        with open(path + '.tmp', 'w') as f:
            f.write('SEQUENTIAL\n')
            f.write(''.join('u%07d;secret;\n' % i for i in range(n)))
        os.rename(path + '.tmp', path)
    return path


def users_txt(n):
    """The same users for sipshard --users (name:password)."""
    path = os.path.join(WORK, 'users-%d.txt' % n)
    if not os.path.exists(path):
        with open(path + '.tmp', 'w') as f:
            f.write(''.join('u%07d:secret\n' % i for i in range(n)))
        os.rename(path + '.tmp', path)
    return path


def number_csv():
    """The caller's injection file for trunk-calls: the dialed number instead of a user."""
    path = os.path.join(WORK, 'number.csv')
    with open(path, 'w') as f:
        f.write('SEQUENTIAL\n%s;\n' % TRUNK_NUMBER)
    return path


# ---- trunk-calls: the dial plan of each server -------------------------------------------------
def trunk_toml(rundir):
    """sipshard --config FILE: one trunk (the SIPp UAS) and one route to it. No OPTIONS checks
    (check_interval_ms = 0): the UAS would count them as unexpected messages."""
    path = os.path.join(rundir, 'trunk.toml')
    with open(path, 'w') as f:
        f.write('# perf/lib/lab.py trunk-calls: calls to %s... go to the SIPp UAS as a trunk\n'
                '[[trunk]]\nname = "gw"\naddress = "%s:%d"\ncheck_interval_ms = 0\n\n'
                '[[route]]\nprefix = "%s"\ntrunks = ["gw"]\n'
                % (TRUNK_PREFIX, IP, UAS_PORT, TRUNK_PREFIX))
    return path


def dispatcher_list(rundir):
    """Kamailio's dispatcher list for perf/kamailio/trunk.cfg: set 1 = the SIPp UAS."""
    path = os.path.join(rundir, 'dispatcher.list')
    with open(path, 'w') as f:
        f.write('# setid destination (perf/lib/lab.py trunk-calls)\n1 sip:%s:%d\n' % (IP, UAS_PORT))
    return path


# ---- SIPp ----------------------------------------------------------------------------------
def sipp_cmd(name, rundir, args, duration):
    max_socket = min(50000, int(subprocess.check_output(['sh', '-c', 'ulimit -n'])) - 1000)
    return ['sipp'] + args + [
        '-nostdin', '-buff_size', str(SIPP_BUF), '-max_socket', str(max_socket),
        # any retransmission fails the trial anyway: give up after one, so that failing
        # trials end quickly instead of retransmitting for 15 s
        '-max_retrans', '1', '-recv_timeout', '10000',
        '-timeout', '%ds' % (duration * 3 + 30),
        '-trace_stat', '-stf', '%s_stat.csv' % name, '-fd', '1',
        '-trace_err', '-error_file', '%s_err.log' % name]


def run_sipp(name, rundir, args, duration, background=False):
    cmd = sipp_cmd(name, rundir, args, duration)
    with open(os.path.join(rundir, name + '.cmd'), 'w') as f:
        f.write(' '.join(cmd) + '\n')
    out = open(os.path.join(rundir, name + '.out'), 'w')
    p = subprocess.Popen(cmd, cwd=rundir, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    if background:
        return p
    return wait_sipp(p, duration)


def wait_sipp(p, duration):
    """Waits (bounded) for a SIPp process; returns (rc, cpu seconds)."""
    deadline = time.time() + duration * 3 + 60
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, ru.ru_utime + ru.ru_stime
        if time.time() > deadline:
            p.kill()
        time.sleep(0.05)


def sipp_stats(path):
    with open(path, errors='replace') as f:
        lines = [l.rstrip('\r\n') for l in f if l.strip()]
    row = dict(zip(lines[0].split(';'), lines[-1].split(';')))
    g = lambda k: int(row.get(k, '0') or 0)

    def epoch(v):
        return float(v.strip().split('\t')[-1])
    try:
        elapsed = epoch(row['CurrentTime']) - epoch(row['StartTime'])
    except (KeyError, ValueError, IndexError):
        elapsed = float('nan')
    return dict(ok=g('SuccessfulCall(C)'), failed=g('FailedCall(C)'),
                retrans=g('Retransmissions(C)'), created=g('TotalCallCreated'),
                unexpected=g('FailedUnexpectedMessage(C)'), outofcall=g('OutOfCallMsgs(C)'),
                elapsed=round(elapsed, 3))


def run_generator(rundir, scenario, rate, total, callee, bins, duration):
    """`sipshard load` as the caller: returns (rc, cpu seconds, SIPp-like stats)."""
    load = {'reg': 'register', 'reg-auth': 'register-digest'}.get(scenario, 'call')
    cmd = [bins['sipshard'], 'load', load, '%s:%d' % (IP, PORT), '--rate', str(rate),
           '--total', str(total), '--timeout-ms', '10000', '--json', '--quiet']
    if load != 'call':
        cmd += ['--aors', str(total), '--user', 'u{n:07}']
    if load == 'register-digest':
        cmd += ['--password', 'secret']
    if load == 'call':
        cmd += ['--callee', callee, '--pause-ms', str(HOLD_MS)]
    with open(os.path.join(rundir, 'client.cmd'), 'w') as f:
        f.write(' '.join(cmd) + '\n')
    out = open(os.path.join(rundir, 'client.json'), 'w')
    p = subprocess.Popen(cmd, cwd=rundir, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    rc, cpu = wait_sipp(p, duration)
    out.close()
    try:
        j = json.load(open(os.path.join(rundir, 'client.json')))
    except ValueError:
        j = dict(completed=0, failed=0, retransmissions=0, started=0, unexpected=0,
                 timeouts=0, elapsed_s=float('nan'))
    st = dict(ok=j['completed'], failed=j['failed'], retrans=j['retransmissions'],
              created=j['started'], unexpected=j['unexpected'], outofcall=0,
              elapsed=j['elapsed_s'], timeouts=j.get('timeouts', 0),
              latency=j.get('latency', {}))
    return rc, cpu, st


# ---- one trial ---------------------------------------------------------------------------
class Lock:
    """One load at a time on this machine: flock(2) on /tmp/bench.lock (what flock(1) takes).

    The tuning/sysctl.conf values are applied only while the lock is held (when root) and the
    previous values are put back before it is released, so other people's runs between ours
    see the machine as they left it."""
    waited = 0.0

    def __enter__(self):
        self.f = open(LOCK, 'a')
        t = time.time()
        fcntl.flock(self.f, fcntl.LOCK_EX)
        w = time.time() - t
        Lock.waited += w
        if w > 1:
            log('waited %.0f s for %s' % (w, LOCK))
        self.prev = apply_sysctl()
        return self

    def __exit__(self, *a):
        restore_sysctl(self.prev)
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def check_ports():
    busy = [p for p in (PORT, SIPP_PORT, UAS_PORT) if udp_port_busy(p)]
    if busy:
        raise RuntimeError('UDP port(s) %s already in use (set PERF_PORT/PERF_SIPP_PORT/'
                           'PERF_UAS_PORT)' % busy)


def tls_files():
    """The certificate and key both servers' TLS listeners use (made once per work dir)."""
    d = os.path.join(WORK, 'tls')
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    if not os.path.exists(cert):
        os.makedirs(d, exist_ok=True)
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                        'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
                        '-days', '30', '-subj', '/CN=%s' % IP, '-addext',
                        'subjectAltName=IP:%s' % IP], check=True, capture_output=True)
    return cert, key


def kamailio_tls_cfg():
    """Kamailio's tls module profile: the same certificate, no client certificates."""
    cert, key = tls_files()
    path = os.path.join(WORK, 'tls', 'kamailio-tls.cfg')
    with open(path, 'w') as f:
        f.write('[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n'
                'require_certificate = no\nprivate_key = %s\ncertificate = %s\n' % (key, cert))
    return path


def start_stunnel(rundir):
    """stunnel in client mode: SIPp's TCP on STUNNEL_PORT becomes TLS to TLS_PORT (a TLS
    session per SIPp connection, resumed from stunnel's session cache when it can)."""
    conf = os.path.join(rundir, 'stunnel.conf')
    with open(conf, 'w') as f:
        f.write('foreground = yes\npid =\ndebug = 3\n[sip]\nclient = yes\n'
                'accept = %s:%d\nconnect = %s:%d\nverifyChain = no\nsessionResume = %s\n'
                % (IP, STUNNEL_PORT, IP, TLS_PORT, 'yes' if TLS_RESUME else 'no'))
    p = subprocess.Popen(['stunnel', conf], stdout=open(os.path.join(rundir, 'stunnel.log'), 'w'),
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    for _ in range(50):
        try:
            socket.create_connection((IP, STUNNEL_PORT), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return p


def trial(target, scenario, rate, duration, bins):
    sc = SCENARIOS[scenario]
    total = rate * duration
    rundir = os.path.join(WORK, scenario, target, 'r%d' % rate)
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    csv = users_csv(max(total, 1))
    res = dict(target=target, scenario=scenario, rate=rate, total=total, duration=duration,
               transport=TRANSPORT + (('+tls' if TLS_RESUME else '+tls-full') if TLS else ''))
    client_scen = os.path.join(SCEN, sc['echo'] if target == 'echo' else sc['sipp'])
    # the echo does one receive+send pair per SIPp call: N calls per op of an N-pair scenario
    per_op = sc['pairs'] if target == 'echo' else 1
    # Over TLS SIPp talks to stunnel, which talks TLS to the server.
    sipp_target = '%s:%d' % (IP, STUNNEL_PORT if TLS else PORT)
    args = [sipp_target, '-sf', client_scen, '-inf', csv, '-i', IP,
            '-p', str(SIPP_PORT), '-t', TRANSPORT, '-r', str(rate * per_op),
            '-m', str(total * per_op)]
    if scenario == 'reg-auth' and target != 'echo':
        args += ['-au', '[field0]', '-ap', '[field1]']
    uas = None
    tunnel = None
    with Lock():
        check_ports()
        srv = Server(target, scenario, total, rundir, bins)
        try:
            srv.start()
            if TLS:
                tunnel = start_stunnel(rundir)
            res['server_cmd'] = ' '.join(srv.cmd)
            if scenario in CALLS:
                if scenario == 'calls':
                    callee = users_csv(1)
                    rc, _ = run_sipp('prereg', rundir, ['%s:%d' % (IP, PORT), '-sf',
                                     os.path.join(SCEN, 'reg.xml'), '-inf', callee, '-i', IP,
                                     '-p', str(UAS_PORT), '-t', 'u1', '-r', '100', '-m', '1'],
                                     10)
                    if rc != 0:
                        raise RuntimeError('callee registration failed')
                else:
                    callee = number_csv()   # no registration: the route finds the trunk
                if GENERATOR == 'sipshard':
                    uas = subprocess.Popen(
                        [bins['sipshard'], '--mode', 'responder', '--shards', '1', '--listen',
                         'udp:%s:%d' % (IP, UAS_PORT), '--log', 'warn'],
                        cwd=rundir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        stdin=subprocess.DEVNULL)
                else:
                    uas = run_sipp('uas', rundir, ['-sf', os.path.join(SCEN, 'uas.xml'),
                                   '-i', IP, '-p', str(UAS_PORT), '-t', 'u1', '-m', str(total)],
                                   duration, background=True)
                for _ in range(50):
                    if udp_port_busy(UAS_PORT):
                        break
                    time.sleep(0.1)
                time.sleep(0.3)
                args = ['%s:%d' % (IP, PORT), '-sf', client_scen, '-inf', callee,
                        '-i', IP, '-p', str(SIPP_PORT), '-t', TRANSPORT, '-r', str(rate),
                        '-m', str(total), '-d', str(HOLD_MS)]
            m0 = scrape() if target.startswith('sipshard') else {}
            e0, k0, w0, b0 = udp_rcvbuf_errors(), srv.ticks(), time.time(), cpu_busy_ticks()
            gen_st = None
            u0 = proc_ticks(uas.pid) if uas else 0
            if GENERATOR == 'sipshard' and target != 'echo':
                callee_user = None
                if scenario in CALLS:
                    with open(callee) as f:
                        callee_user = f.read().split('\n')[1].split(';')[0]
                rc, sipp_cpu, gen_st = run_generator(rundir, scenario, rate, total, callee_user,
                                                     bins, duration)
            else:
                rc, sipp_cpu = run_sipp('client', rundir, args, duration)
            k1, w1, e1, b1 = srv.ticks(), time.time(), udp_rcvbuf_errors(), cpu_busy_ticks()
            res['loadavg'] = float(open('/proc/loadavg').read().split()[0])
            res['rss_kib'] = srv.hwm_kib()
            res['server_procs'] = len(srv.pids)
            m1 = scrape() if target.startswith('sipshard') else {}
            if uas and gen_st is not None:
                # the responder: its CPU over the run, then stopped
                res['uas_cpu_s'] = round((proc_ticks(uas.pid) - u0) / CLK_TCK, 2)
                uas.send_signal(signal.SIGTERM)
                uas.wait(10)
            elif uas:
                urc, ucpu = wait_sipp(uas, duration)
                res['uas'] = sipp_stats(os.path.join(rundir, 'uas_stat.csv'))
                res['uas']['rc'] = urc
                res['uas_cpu_s'] = round(ucpu, 2)
        finally:
            if uas and uas.poll() is None:
                uas.kill()
                uas.wait()
            if tunnel:
                tunnel.terminate()
                tunnel.wait()
            srv.stop()
    st = gen_st if gen_st is not None else sipp_stats(os.path.join(rundir, 'client_stat.csv'))
    res['generator'] = 'sipshard load' if gen_st is not None else 'sipp'
    if per_op > 1:      # echo: count ops, not SIPp calls
        for k in ('ok', 'created'):
            st[k] //= per_op
        res['echo_calls_per_op'] = per_op
    wall = w1 - w0
    cpu_s = (k1 - k0) / CLK_TCK
    res.update(sipp=st, sipp_rc=rc, wall_s=round(wall, 2), server_cpu_s=round(cpu_s, 2),
               server_cpu_pct=round(100 * cpu_s / wall), sipp_cpu_pct=round(100 * sipp_cpu / wall),
               udp_rcvbuf_errors=e1 - e0,
               achieved=round(st['ok'] / st['elapsed']) if st['elapsed'] > 0 else 0)
    # everything else on the machine (other people's builds...), % of one core; /proc/stat
    # can under-report in this VM, so this is a lower bound
    other = (b1 - b0) / CLK_TCK - cpu_s - sipp_cpu - res.get('uas_cpu_s', 0)
    res['others_cpu_pct'] = max(0, round(100 * other / wall))
    res['cpu_us_per_op'] = round(1e6 * cpu_s / st['ok'], 2) if st['ok'] else None
    problems = []
    if st['ok'] != total:
        problems.append('successful %d != -m %d' % (st['ok'], total))
    for k in ('failed', 'retrans', 'unexpected', 'outofcall', 'timeouts'):
        if st.get(k):
            problems.append('%s=%d' % (k, st[k]))
    if rc != 0:
        problems.append('%s exit code %d' % (res['generator'], rc))
    if res['achieved'] < rate * MIN_ACHIEVED_PCT // 100:
        problems.append('achieved %d/s < %d%% of %d/s' % (res['achieved'], MIN_ACHIEVED_PCT, rate))
    if 'uas' in res:
        u = res['uas']
        if u['ok'] != total or u['failed'] or u['retrans']:
            problems.append('UAS ok=%d failed=%d retrans=%d' % (u['ok'], u['failed'], u['retrans']))
    res['problems'] = problems
    mismatch = []
    if target.startswith('sipshard'):
        d = lambda k: m1.get(k, 0) - m0.get(k, 0)
        regs = d('sipshard_requests_received_total{method="REGISTER"}')
        s200 = d('sipshard_responses_sent_total{status="200"}')
        s401 = d('sipshard_responses_sent_total{status="401"}')
        dgrams = sum(v for k, v in m1.items() if k.startswith('sipshard_datagrams_received_total'))
        per_shard = [int(v) for k, v in sorted(m1.items())
                     if k.startswith('sipshard_datagrams_received_total')]
        hand = m1.get('sipshard_handoffs_total', 0)
        wakeups = m1.get('sipshard_wakeups_total', 0)
        res['sipshard'] = dict(
            register_rx=int(regs), sent_200=int(s200), sent_401=int(s401),
            bindings=int(m1.get('sipshard_bindings', -1)),
            datagrams_rx=int(dgrams), datagrams_rx_per_shard=per_shard, handoffs=int(hand),
            handoff_share=round(hand / dgrams, 3) if dgrams else None, wakeups=int(wakeups),
            dropped={k.split('"')[1]: int(v) for k, v in m1.items()
                     if k.startswith('sipshard_dropped_total') and v},
            latency_us={k.split('"')[1]: int(v) for k, v in m1.items()
                        if k.startswith('sipshard_latency_us_quantile')},
            # where that latency goes: {stage: {quantile: µs}} (sipshard_stage_us_quantile)
            stages_us=stage_quantiles(m1),
            # every SIP message counter that moved during the load (requests by method,
            # responses by status, datagrams), for the call scenarios' checks
            counts={k[len('sipshard_'):]: int(d(k)) for k in m1
                    if k.startswith(('sipshard_requests_', 'sipshard_responses_',
                                     'sipshard_datagrams_', 'sipshard_dropped_')) and d(k)})
        ok = st['ok']
        if scenario in ('reg', 'reg-auth') and not problems:
            # with zero failures and zero retransmissions the counts must agree exactly
            want = dict(register_rx=ok * sc['pairs'], sent_200=ok,
                        sent_401=ok if scenario == 'reg-auth' else 0, bindings=ok)
            if TCP:
                # bindings over a connection go when it closes (RFC 5626 flows): SIPp's
                # connection closes as the counters are read
                del want['bindings']
            for k, v in want.items():
                if res['sipshard'][k] != v:
                    mismatch.append('sipshard %s=%d, SIPp implies %d' % (k, res['sipshard'][k], v))
        if scenario in CALLS and not problems:
            # per call: INVITE, ACK, BYE in from the caller and out to the callee; 180, 200,
            # 200 (BYE) in from the callee; 100 (our own), 180, 200, 200 out to the caller:
            # 6 datagrams in, 7 out; nothing else (no OPTIONS, no stray response, no drop)
            want = {'requests_received_total{method="%s"}' % m: ok for m in ('INVITE', 'ACK', 'BYE')}
            want.update({'requests_sent_total{method="%s"}' % m: ok for m in ('INVITE', 'ACK', 'BYE')})
            # the callee sends no 100 (SIPp's uas.xml, and the responder without a ring time)
            trying = 0
            want.update({'responses_received_total': 3 * ok + trying,
                         'responses_sent_total{status="100"}': ok,
                         'responses_sent_total{status="180"}': ok,
                         'responses_sent_total{status="200"}': 2 * ok,
                         'datagrams_received_total': 6 * ok + trying,
                         'datagrams_sent_total': 7 * ok})
            got = {}
            for k, v in res['sipshard']['counts'].items():
                k = 'datagrams_received_total' if k.startswith('datagrams_received_total') else k
                got[k] = got.get(k, 0) + v
            for k in sorted(set(want) | set(got)):
                if got.get(k, 0) != want.get(k, 0):
                    mismatch.append('sipshard %s=%d, SIPp implies %d' % (k, got.get(k, 0),
                                                                          want.get(k, 0)))
    res['counter_mismatch'] = mismatch
    res['pass'] = not problems and not mismatch
    if mismatch:
        log('!!! COUNTER MISMATCH %s %s @%d/s: %s (rundir %s)'
            % (target, scenario, rate, '; '.join(mismatch), rundir))
    res['rundir'] = rundir
    return res


def stage_quantiles(metrics):
    """{stage: {quantile: µs}} from the sipshard_stage_us_quantile series of a scrape."""
    out = {}
    for k, v in metrics.items():
        if k.startswith('sipshard_stage_us_quantile{'):
            labels = dict(p.split('=', 1) for p in k[k.index('{') + 1:-1].split(','))
            out.setdefault(labels['stage'].strip('"'), {})[labels['quantile'].strip('"')] = int(v)
    return out


def fmt_trial(r):
    s = r['sipp']
    extra = ''
    if 'sipshard' in r:
        q = r['sipshard']['latency_us']
        extra = ' lat_us p50/p99/p99.9=%s/%s/%s hop=%s' % (q.get('0.5'), q.get('0.99'),
                                                          q.get('0.999'),
                                                          r['sipshard']['handoff_share'])
    return ('%-10s %-8s rate=%-6d pass=%d ok=%d failed=%d retrans=%d achieved=%d cpu=%s us/op '
            'srv=%d%% sipp=%d%% others=%s%% drops=%d rss=%.1fMiB%s%s'
            % (r['target'], r['scenario'], r['rate'], r['pass'], s['ok'], s['failed'],
               s['retrans'], r['achieved'], r['cpu_us_per_op'], r['server_cpu_pct'],
               r['sipp_cpu_pct'], r.get('others_cpu_pct'), r['udp_rcvbuf_errors'],
               r['rss_kib'] / 1024, extra,
               (' PROBLEMS: ' + '; '.join(r['problems'] + r['counter_mismatch']))
               if not r['pass'] else ''))


def search(target, scenario, opts, bins, trials):
    """Doubling from the fixed rate until a failure, bisection, one confirmation."""
    def run(rate):
        try:
            r = trial(target, scenario, rate, opts.duration, bins)
        except Exception as e:  # a server that does not start is a failed trial, loudly
            log('!!! %s %s @%d/s: %s' % (target, scenario, rate, e))
            r = {'target': target, 'scenario': scenario, 'rate': rate, 'pass': False,
                 'error': str(e)}
        trials.append(r)
        if 'error' not in r:
            log(fmt_trial(r))
        return r
    start = SCENARIOS[scenario]['fixed']
    lo = hi = 0
    best = None
    fixed = run(start)
    r, rate = fixed, start
    while not r['pass'] and rate > MIN_STEP and rate * 16 > start:
        # the fixed rate already fails (a loaded machine): halve until a rate passes
        hi = rate
        rate = max(MIN_STEP, rate // 2 // MIN_STEP * MIN_STEP)
        r = run(rate)
    while True:
        if r['pass']:
            lo, best = rate, r
            if rate >= MAX_RATE or (hi and rate * 2 >= hi):
                break
            rate = min(rate * 2, MAX_RATE)
            r = run(rate)
        else:
            hi = rate
            break
    while hi and lo:
        if hi - lo <= max(lo * opts.tol_pct // 100, MIN_STEP):
            break
        rate = (lo + hi) // 2 // MIN_STEP * MIN_STEP
        if rate <= lo or rate >= hi:
            break
        r = run(rate)
        if r['pass']:
            lo, best = rate, r
        else:
            hi = rate
    if opts.confirm and best and best is not fixed:
        for _ in range(3):
            r = run(lo)
            if r['pass']:
                best = r
                break
            best = None
            lo = lo * 95 // 100 // MIN_STEP * MIN_STEP
            if lo < MIN_STEP:
                break
    if best is None:
        # the confirmation failed three times (on this shared machine usually because SIPp
        # fell short of the rate): report the highest rate that passed once, marked as such
        passed = [t for t in trials if t.get('pass') and t['target'] == target
                  and t['scenario'] == scenario]
        if passed:
            best = dict(max(passed, key=lambda t: t['rate']), unconfirmed=True)
    # In-server latency at 50% and 90% of the highest rate (issue #5 asks for both).
    at_share = {}
    if best and target.startswith('sipshard'):
        for pct in (50, 90):
            rate = max(MIN_STEP, best['rate'] * pct // 100 // MIN_STEP * MIN_STEP)
            at_share[str(pct)] = run(rate)
    return dict(target=target, scenario=scenario, fixed=fixed, best=best,
                max_rate=best['rate'] if best else 0,
                unconfirmed=bool(best and best.get('unconfirmed')), at_share=at_share)


# ---- sipshard calls: is the proxy there yet? --------------------------------------------------
def sipshard_proxy_probe(bins):
    """Registers a callee AOR and sends one INVITE for it. Returns (available, what happened)."""
    rundir = os.path.join(WORK, 'calls', 'sipshard-probe')
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    with Lock():
        check_ports()
        srv = Server('sipshard-2', 'calls', 1, rundir, bins)
        try:
            srv.start()
            uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            uas.bind((IP, UAS_PORT))
            uas.settimeout(0.5)
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((IP, 0))
            c.settimeout(2)
            lp = c.getsockname()[1]

            def req(method, cseq, extra=''):
                return ('%s sip:callee@%s:%d SIP/2.0\r\nVia: SIP/2.0/UDP %s:%d;branch=z9hG4bKprobe%s\r\n'
                        'Max-Forwards: 70\r\nFrom: <sip:probe@%s>;tag=p1\r\nTo: <sip:callee@%s>\r\n'
                        'Call-ID: probe-%s@perf\r\nCSeq: %d %s\r\n%sContent-Length: 0\r\n\r\n'
                        % (method, IP, PORT, IP, lp, method, IP, IP, method, cseq, method, extra)).encode()
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((IP, 0))
            reg = req('REGISTER', 1, 'Contact: <sip:callee@%s:%d>\r\nExpires: 60\r\n' % (IP, UAS_PORT))
            c.sendto(reg.replace(b'REGISTER sip:callee@', b'REGISTER sip:', 1), (IP, PORT))
            first = c.recv(65535).split(b'\r\n', 1)[0].decode(errors='replace')
            c.sendto(req('INVITE', 1, 'Contact: <sip:probe@%s:%d>\r\n' % (IP, lp)), (IP, PORT))
            final = None
            t_end = time.time() + 3
            while time.time() < t_end and final is None:
                try:
                    data = c.recv(65535)
                    line = data.split(b'\r\n', 1)[0].decode(errors='replace')
                    if not line.split()[1].startswith('1'):
                        final = line
                except socket.timeout:
                    pass
                try:
                    uas.recv(65535)
                    return True, 'REGISTER -> %s; INVITE reached the callee' % first
                except socket.timeout:
                    pass
            return False, 'REGISTER -> "%s"; INVITE to the registered user -> "%s"' % (first, final)
        finally:
            srv.stop()


# ---- trunk-calls: what reaches the gateway -------------------------------------------------
def trunk_probe(target, bins):
    """One INVITE to the trunk number through the server; returns what the gateway (a plain
    socket on the UAS port) received: the request line and the routing headers."""
    rundir = os.path.join(WORK, 'trunk-calls', target, 'probe')
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    with Lock():
        check_ports()
        srv = Server(target, 'trunk-calls', 1, rundir, bins)
        gw = c = None
        try:
            srv.start()
            gw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            gw.bind((IP, UAS_PORT))
            gw.settimeout(3)
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((IP, 0))
            lp = c.getsockname()[1]
            c.sendto(('INVITE sip:%s@%s:%d SIP/2.0\r\n'
                      'Via: SIP/2.0/UDP %s:%d;branch=z9hG4bKtrunkprobe\r\nMax-Forwards: 70\r\n'
                      'From: <sip:probe@%s>;tag=p1\r\nTo: <sip:%s@%s:%d>\r\n'
                      'Call-ID: trunk-probe@perf\r\nCSeq: 1 INVITE\r\n'
                      'Contact: <sip:probe@%s:%d>\r\nContent-Length: 0\r\n\r\n'
                      % (TRUNK_NUMBER, IP, PORT, IP, lp, IP, TRUNK_NUMBER, IP, PORT, IP, lp))
                     .encode(), (IP, PORT))
            try:
                data, src = gw.recvfrom(65535)
            except socket.timeout:
                return dict(error='no INVITE reached the gateway within 3 s')
            text = data.decode(errors='replace')
            with open(os.path.join(rundir, 'forwarded-invite.txt'), 'w') as f:
                f.write(text)
            lines = text.split('\r\n')
            hdr = lambda n: [l.split(':', 1)[1].strip() for l in lines[1:]
                             if l.split(':', 1)[0].strip().lower() == n]
            return dict(request_line=lines[0], to=(hdr('to') or [''])[0],
                        record_route=hdr('record-route'), route=hdr('route'),
                        vias=len(hdr('via')), from_addr='%s:%d' % src)
        finally:
            for so in (gw, c):
                if so:
                    so.close()
            srv.stop()


# ---- the run ------------------------------------------------------------------------------
def machine():
    cpu = 'unknown'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break

    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return 'unknown'
    return dict(cpu=cpu, cores=os.cpu_count(), kernel=platform.release(),
                sipp=first_line(['sipp', '-v']).replace('SIPp ', ''),
                kamailio=first_line(['kamailio', '-v']).replace('version: ', ''),
                rustc=first_line(['rustc', '-V']),
                host_load=open('/proc/loadavg').read().split()[:3])


SYSCTL = {}          # what tuning/sysctl.conf set during the trials: key -> (value, previous)


def apply_sysctl():
    """Applies tuning/sysctl.conf when root; returns the previous values to restore."""
    conf = os.environ.get('PERF_SYSCTL_FILE') or os.path.join(REPO, 'tuning', 'sysctl.conf')
    prev = {}
    if os.geteuid() != 0 or os.environ.get('PERF_NO_SYSCTL') or not os.path.exists(conf):
        return prev
    with open(conf) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if '=' not in line:
                continue
            k, v = (x.strip() for x in line.split('=', 1))
            path = '/proc/sys/' + k.replace('.', '/')
            try:
                with open(path) as g:
                    old = g.read().strip()
                with open(path, 'w') as g:
                    g.write(v)
                prev[k] = old
                if k not in SYSCTL:
                    log('sysctl %s=%s during each trial (was %s; restored after it)' % (k, v, old))
                SYSCTL[k] = (v, old)
            except OSError as e:
                log('sysctl %s=%s not applied: %s' % (k, v, e))
    return prev


def restore_sysctl(prev):
    for k, v in prev.items():
        try:
            with open('/proc/sys/' + k.replace('.', '/'), 'w') as g:
                g.write(v)
        except OSError as e:
            log('!!! could not restore sysctl %s=%s: %s' % (k, v, e))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('scenarios', nargs='+', choices=list(SCENARIOS))
    ap.add_argument('--bin', required=True)
    ap.add_argument('--echo', required=True)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--targets', default=','.join(TARGETS))
    ap.add_argument('--command', default='perf/compare')
    ap.add_argument('--rate', type=int, help='one trial per target at this rate, no search; '
                    'prints the trial lines and writes nothing to perf/results')
    ap.add_argument('--repeat', type=int, default=1,
                    help='with --rate: K rounds, each running every scenario and target once '
                    '(so scenarios alternate); prints the median CPU µs/op of each')
    ap.add_argument('--json', help='with --rate: also write the trials to this JSON file')
    opts = ap.parse_args()
    opts.duration = int(os.environ.get('PERF_DURATION', 5 if opts.quick else 20))
    opts.tol_pct = int(os.environ.get('PERF_TOL_PCT', 20 if opts.quick else 5))
    opts.confirm = not opts.quick
    bins = dict(sipshard=opts.bin, echo=opts.echo)
    # The echo floor is a UDP program: no TCP counterpart.
    targets = [t for t in opts.targets.split(',') if not (TCP and t == 'echo')]
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    day = datetime.date.today().isoformat()
    started = time.time()
    if opts.rate:
        trials, probes = [], {}
        for rnd in range(opts.repeat):
            for scenario in opts.scenarios:
                for target in targets:
                    if scenario in CALLS and target == 'echo':
                        continue
                    if scenario == 'trunk-calls' and target not in probes:
                        try:
                            probes[target] = trunk_probe(target, bins)
                        except Exception as e:
                            probes[target] = dict(error=str(e))
                        print('trunk probe %s: %s' % (target, probes[target]), flush=True)
                    r = trial(target, scenario, opts.rate, opts.duration, bins)
                    r['round'] = rnd + 1
                    trials.append(r)
                    print(fmt_trial(r), flush=True)
                    print(json.dumps(r), file=sys.stderr)
        med = {}
        if opts.repeat > 1:
            for scenario in opts.scenarios:
                for target in targets:
                    v = sorted(r['cpu_us_per_op'] for r in trials if r['scenario'] == scenario
                               and r['target'] == target and r['pass'])
                    n = len([r for r in trials if r['scenario'] == scenario
                             and r['target'] == target])
                    if not n:
                        continue
                    m = (v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
                         ) if v else None
                    med['%s %s' % (target, scenario)] = m
                    print('median %-10s %-11s %s µs/op over %d passing of %d trials: %s'
                          % (target, scenario, m, len(v), n, v), flush=True)
        if opts.json:
            with open(opts.json, 'w') as f:
                json.dump(dict(date=day, command=opts.command, generator=GENERATOR,
                               rate=opts.rate,
                               duration=opts.duration, repeat=opts.repeat, transport=TRANSPORT,
                               machine=machine(), forwarded_invite=probes,
                               median_cpu_us_per_op=med, trials=trials), f, indent=1)
        return
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    outputs = []
    done = {}
    # trunk-calls last, so that it can be set against calls of the same run
    for scenario in sorted(opts.scenarios, key=lambda x: x == 'trunk-calls'):
        trials, searches, notes = [], [], {}
        for target in targets:
            if scenario in CALLS and target == 'echo':
                continue
            if scenario == 'calls' and target.startswith('sipshard'):
                if 'sipshard' not in notes:
                    avail, what = sipshard_proxy_probe(bins)
                    notes['sipshard'] = (avail, what)
                    log('sipshard proxy probe: %s' % what)
                if not notes['sipshard'][0]:
                    searches.append(dict(target=target, scenario=scenario, fixed=None,
                                         best=None, max_rate=None,
                                         note='not available yet: ' + notes['sipshard'][1]))
                    continue
            if scenario == 'trunk-calls':
                fwd = notes.setdefault('forwarded_invite', {})
                try:
                    fwd[target] = trunk_probe(target, bins)
                except Exception as e:
                    fwd[target] = dict(error=str(e))
                log('trunk probe %s: the gateway got %s' % (target, fwd[target]))
            log('== %s: %s (%s s trials, SIPp -t %s)' % (scenario, target, opts.duration,
                                                        TRANSPORT))
            searches.append(search(target, scenario, opts, bins, trials))
        doc = dict(date=day, scenario=scenario, title=SCENARIOS[scenario]['title'],
                   quick=opts.quick, duration=opts.duration, tol_pct=opts.tol_pct,
                   transport=TRANSPORT, command=opts.command, machine=machine(),
                   generator=GENERATOR,
                   kam_children=KAM_CHILDREN, kam_shm_mb=KAM_SHM_MB, kam_maxbuffer=KAM_MAXBUFFER,
                   run_as=RUN_AS or None, sipshard_extra_args=EXTRA_ARGS,
                   sysctl_applied={k: v[0] for k, v in SYSCTL.items()},
                   sysctl_previous={k: v[1] for k, v in SYSCTL.items()},
                   lock_wait_s=round(Lock.waited), wall_min=round((time.time() - started) / 60, 1),
                   fixed_rate=SCENARIOS[scenario]['fixed'], searches=searches,
                   trials=trials)
        if 'forwarded_invite' in notes:
            doc['forwarded_invite'] = notes['forwarded_invite']
        if scenario == 'trunk-calls' and 'calls' in done:
            # the registered-user call of the same run, for the trunk/user ratio (issue 15)
            doc['calls_same_run'] = dict((k, done['calls'][k]) for k in
                                         ('title', 'fixed_rate', 'searches', 'trials'))
        done[scenario] = doc
        base = os.path.join(RESULTS, '%s-%s%s%s' % (
            day, scenario, '' if TRANSPORT == 'un' else '-' + TRANSPORT,
            '-quick' if opts.quick else ''))
        with open(base + '.json', 'w') as f:
            json.dump(doc, f, indent=1)
        outputs.append(base + '.json')
        log('wrote %s.json' % base)
    # tables, plots and the printed summary
    # README.md's Performance section follows full runs into perf/results only
    readme = not (opts.quick or TRANSPORT != 'un' or os.environ.get('PERF_NO_README')
                  or os.path.realpath(RESULTS) != os.path.realpath(os.path.join(PERF, 'results')))
    subprocess.check_call([sys.executable, os.path.join(PERF, 'lib', 'report.py')]
                          + (['--readme'] if readme else []) + outputs,
                          env=dict(os.environ, PERF_RESULTS=RESULTS))
    log('done in %.1f min' % ((time.time() - started) / 60))


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""`sipshard load call` vs a SIPp UAC as call generators, against one sipshard responder (stdlib only).

One target for the whole run, on a free UDP port below 30000, stopped by PID at the end:

  BIN --mode responder --shards 1 --listen udp:127.0.0.1:PORT --log warn

Default mode: K rounds (--repeat) at RATE calls/s for DURATION s, each round running the two
generators one after the other (alternating the order each round):

  sipp           sipp 127.0.0.1:PORT -sn uac -i 127.0.0.1 -p SPORT -r RATE -m RATE*DURATION
                      -nostdin -trace_stat -stf FILE -fd 1 -timeout 120s
  sipshard-load  BIN load call 127.0.0.1:PORT --rate RATE --total RATE*DURATION --threads 1
                      --json --quiet

Measured per run: the generator's own CPU (utime+stime from os.wait4 of the child: the
generator is started directly, not through a wrapper), the responder's CPU delta
(/proc/PID/stat utime+stime) over the same interval, the outcome (SIPp: SuccessfulCall(C),
FailedCall(C), Retransmissions(C), FailedUnexpectedMessage(C) from the last -trace_stat line;
sipshard load: completed, failed, failed_by_status, retransmissions, timeouts, unexpected from
its JSON), the CPU all other processes used meanwhile (noise; noisy runs are redone) and the
UdpRcvbufErrors delta. Reports the medians of generator CPU µs per call, the ratio
SIPp/sipshard-load, and the responder's CPU µs per call under each generator.

--max-rate: for each generator in turn, steps the rate (--rates, --step-duration s each;
stops a generator after two unclean steps in a row) and reports the highest clean rate: every
call successful, 0 failed, 0 retransmissions, 0 unexpected (and 0 timeouts for sipshard load),
achieved rate >= 95 %% of the offered rate; with that generator's CPU %% of one core there and
the responder's. On a 2-core machine the generator and the responder compete for the cores.

--check-counters adds `--metrics 127.0.0.1:MPORT` to the responder and compares its INVITE /
ACK / BYE received counters over each run with what the generator reports.

This script does not take /tmp/bench.lock itself: run it under `flock /tmp/bench.lock`.
"""
import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TCK = os.sysconf('SC_CLK_TCK')
CHILDREN = []          # Popen objects still to be stopped on the way out
GENS = ['sipp', 'sipshard-load']
LABEL = {'sipp': 'SIPp %s UAC', 'sipshard-load': 'sipshard load call'}


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


# ---- /proc -------------------------------------------------------------------------------------
def proc_ticks(pid):
    """utime+stime of one process (all its threads), in clock ticks."""
    return sum(proc_us_ticks(pid))


def proc_us_ticks(pid):
    """(utime, stime) of one process (all its threads), in clock ticks."""
    with open('/proc/%d/stat' % pid) as f:
        rest = f.read().rsplit(')', 1)[1].split()
    return int(rest[11]), int(rest[12])


def ctx_switches(pid):
    """Voluntary context switches (sleeps: wake-ups) summed over a process's live threads."""
    n = 0
    for tid in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/status' % (pid, tid)) as f:
                for line in f:
                    if line.startswith('voluntary_ctxt_switches'):
                        n += int(line.split()[1])
        except OSError:
            pass
    return n


def busy_ticks():
    """(busy, steal) ticks of all CPUs from /proc/stat."""
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[7]


def rcvbuf_errors():
    with open('/proc/net/snmp') as f:
        rows = [l.split() for l in f if l.startswith('Udp:')]
    return int(rows[1][rows[0].index('RcvbufErrors')])


def udp_bound(port):
    want = ':%04X' % port
    for fn in ('/proc/net/udp', '/proc/net/udp6'):
        try:
            with open(fn) as f:
                next(f)
                if any(l.split()[1].endswith(want) for l in f):
                    return True
        except OSError:
            pass
    return False


def tcp_bound(port):
    want = ':%04X' % port
    for fn in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(fn) as f:
                next(f)
                if any(l.split()[1].endswith(want) for l in f):
                    return True
        except OSError:
            pass
    return False


def free_port(avoid=(), lo=10000, hi=29999):
    """A UDP (and TCP) port below 30000 nothing has bound, bind-tested on 127.0.0.1, not next to
    `avoid`."""
    for _ in range(5000):
        p = random.randrange(lo, hi, 2)
        if any(abs(p - q) < 4 for q in avoid) or udp_bound(p) or udp_bound(p + 1) or tcp_bound(p):
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(('127.0.0.1', p))
        except OSError:
            continue
        finally:
            s.close()
        return p
    raise RuntimeError('no free UDP port found in %d-%d' % (lo, hi))


# ---- processes ---------------------------------------------------------------------------------
def spawn(cmd, out_path, cwd, err_path=None):
    out = open(out_path, 'w')
    err = open(err_path, 'w') if err_path else subprocess.STDOUT
    p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    if err_path:
        err.close()
    CHILDREN.append(p)
    return p


def stop(p, grace=5.0):
    """SIGTERM the process we started (by PID), wait, SIGKILL it if it lingers."""
    if p.returncode is None and p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(grace)
    if p in CHILDREN:
        CHILDREN.remove(p)


def cleanup(*_):
    for p in list(CHILDREN):
        try:
            stop(p, 2.0)
        except Exception as e:            # keep cleaning the others
            log('cleanup of pid %d: %s' % (p.pid, e))


def sipp_stats(path):
    with open(path, errors='replace') as f:
        lines = [l.rstrip('\r\n') for l in f if l.strip()]
    row = dict(zip(lines[0].split(';'), lines[-1].split(';')))

    def g(k):
        try:
            return int(row.get(k, '0') or 0)
        except ValueError:
            return -1
    return dict(ok=g('SuccessfulCall(C)'), failed=g('FailedCall(C)'),
                retrans=g('Retransmissions(C)'), unexpected=g('FailedUnexpectedMessage(C)'),
                created=g('TotalCallCreated'), timeouts=None, failed_by_status=None)


def scrape(mport):
    """The responder's request counters {INVITE, ACK, BYE} from its Prometheus endpoint."""
    if not mport:
        return None
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % mport, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('sipshard_requests_received_total{method="'):
            m = line.split('"')[1]
            out[m] = int(float(line.rsplit(' ', 1)[1]))
    return out


# ---- the responder -----------------------------------------------------------------------------
class Responder:
    def __init__(self, opts, rundir):
        self.port = free_port()
        self.mport = free_port([self.port]) if opts.check_counters else None
        self.cmd = [opts.bin, '--mode', 'responder', '--shards', '1',
                    '--listen', 'udp:127.0.0.1:%d' % self.port, '--log', 'warn']
        if self.mport:
            self.cmd += ['--metrics', '127.0.0.1:%d' % self.mport]
        self.log_path = os.path.join(rundir, 'responder.out')
        self.p = spawn(self.cmd, self.log_path, rundir)
        deadline = time.time() + 10
        while not udp_bound(self.port):
            if self.p.poll() is not None or time.time() > deadline:
                raise RuntimeError('the responder did not bind udp 127.0.0.1:%d (rc %s), see %s'
                                   % (self.port, self.p.poll(), self.log_path))
            time.sleep(0.02)
        time.sleep(0.3)
        log('responder pid %d on udp 127.0.0.1:%d: %s' % (self.p.pid, self.port, ' '.join(self.cmd)))

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        stop(self.p)


# ---- one run -----------------------------------------------------------------------------------
def gen_cmd(gen, rate, calls, opts, resp, sport):
    if gen == 'sipp':
        return ['sipp', '127.0.0.1:%d' % resp.port, '-sn', 'uac', '-i', '127.0.0.1',
                '-p', str(sport), '-r', str(rate), '-m', str(calls), '-nostdin',
                '-trace_stat', '-stf', 'uac_stat.csv', '-fd', '1',
                '-timeout', '120s'] + opts.sipp_extra.split()
    return [opts.bin, 'load', 'call', '127.0.0.1:%d' % resp.port, '--rate', str(rate),
            '--total', str(calls), '--threads', '1', '--json', '--quiet'] + opts.load_extra.split()


def one_run(gen, rate, duration, opts, resp, rundir, tag):
    calls = rate * duration
    d = os.path.join(rundir, tag)
    os.makedirs(d)
    sport = free_port([resp.port, resp.mport or 0])
    cmd = gen_cmd(gen, rate, calls, opts, resp, sport)
    if not resp.alive():
        raise RuntimeError('the responder has exited (rc %s), see %s' % (resp.p.returncode, resp.log_path))
    c0 = scrape(resp.mport)
    (ru0, rs0), (b0, s0), e0 = proc_us_ticks(resp.p.pid), busy_ticks(), rcvbuf_errors()
    r0 = ru0 + rs0
    w0 = ctx_switches(resp.p.pid)
    t0 = time.time()
    g = spawn(cmd, os.path.join(d, 'stdout'), d, os.path.join(d, 'stderr'))
    deadline = t0 + duration * 3 + 150
    killed = False
    while True:
        pid, status, ru = os.wait4(g.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline and not killed:
            log('%s still running after %d s: SIGKILL pid %d' % (gen, deadline - t0, g.pid))
            os.kill(g.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    wall = time.time() - t0
    (ru1, rs1), (b1, s1), e1 = proc_us_ticks(resp.p.pid), busy_ticks(), rcvbuf_errors()
    r1 = ru1 + rs1
    w1 = ctx_switches(resp.p.pid)
    g.returncode = os.waitstatus_to_exitcode(status)
    CHILDREN.remove(g)
    time.sleep(0.2)   # stragglers (a late 200 to a BYE) reach the responder's counters
    c1 = scrape(resp.mport)
    if not resp.alive():
        raise RuntimeError('the responder exited during the run (rc %s), see %s'
                           % (resp.p.returncode, resp.log_path))

    gen_s = ru.ru_utime + ru.ru_stime
    resp_s = (r1 - r0) / TCK
    other_s = (b1 - b0) / TCK - resp_s - gen_s
    extra = {}
    if gen == 'sipp':
        try:
            st = sipp_stats(os.path.join(d, 'uac_stat.csv'))
        except (OSError, IndexError) as e:
            raise RuntimeError('no SIPp statistics in %s: %s' % (d, e))
        run_s = wall
    else:
        try:
            j = json.loads(open(os.path.join(d, 'stdout')).read())
        except (OSError, ValueError) as e:
            raise RuntimeError('sipshard load printed no JSON (rc %s, %s), see %s'
                               % (g.returncode, e, d))
        st = dict(ok=j['completed'], failed=j['failed'], retrans=j['retransmissions'],
                  unexpected=j['unexpected'], created=j['started'], timeouts=j['timeouts'],
                  failed_by_status=j['failed_by_status'])
        run_s = j['elapsed_s']
        lag = j.get('start_lag_us', {})
        lat = j.get('latency', {})
        extra = dict(start_lag_p99_us=lag.get('p99'), start_lag_max_us=lag.get('max'),
                     invite_200_p99_us=lat.get('invite_200', {}).get('p99'),
                     bye_200_p99_us=lat.get('bye_200', {}).get('p99'))
    ok = st['ok']
    r = dict(generator=gen, rate=rate, calls=calls, rc=g.returncode, killed=killed, **st, **extra,
             wall_s=round(wall, 2), run_s=round(run_s, 3),
             achieved_cps=round(ok / run_s, 1) if run_s else 0,
             gen_cpu_s=round(gen_s, 3),
             gen_us_per_call=round(gen_s * 1e6 / ok, 2) if ok else None,
             gen_cpu_pct=round(100 * gen_s / wall, 1),
             resp_cpu_s=round(resp_s, 3),
             resp_us_per_call=round(resp_s * 1e6 / ok, 2) if ok else None,
             resp_cpu_pct=round(100 * resp_s / wall, 1),
             other_cpu_pct=round(100 * max(other_s, 0) / wall, 1),
             steal_pct=round(100 * (s1 - s0) / TCK / wall, 1),
             rcvbuf_errors=e1 - e0,
             # wake-ups per call: how much each side batches
             gen_wakeups_per_call=round(ru.ru_nvcsw / ok, 2) if ok else None,
             resp_wakeups_per_call=round((w1 - w0) / ok, 2) if ok else None,
             command=' '.join(cmd), dir=d)
    if c0 is not None and c1 is not None:
        got = {m: c1.get(m, 0) - c0.get(m, 0) for m in ('INVITE', 'ACK', 'BYE')}
        # Without retransmissions: one INVITE per call created, ACK and BYE per answered call.
        want = {'INVITE': st['created'], 'ACK': ok + st['failed'] - (st['timeouts'] or 0),
                'BYE': ok}
        r['responder_received'] = got
        r['counter_mismatch'] = (st['retrans'] == 0 and st['failed'] == 0 and got != want)
    r['noisy'] = r['other_cpu_pct'] > opts.max_other_cpu
    r['clean'] = (ok == calls and r['failed'] == 0 and r['retrans'] == 0 and r['unexpected'] == 0
                  and not r['timeouts'] and g.returncode == 0 and not killed
                  and r['achieved_cps'] >= 0.95 * rate)
    log('%-13s %5d/s: ok %d/%d failed %d%s retrans %d unexp %d%s | gen %s µs/call %.0f%% | '
        'resp %s µs/call %.0f%% | wake-ups/call gen %s resp %s | other %.0f%% | %.1f s, achieved %.0f/s, rcvbuf errs %d, rc %d%s%s'
        % (gen, rate, ok, calls, r['failed'],
           ' %s' % r['failed_by_status'] if r['failed_by_status'] else '', r['retrans'],
           r['unexpected'], '' if r['timeouts'] is None else ' timeouts %d' % r['timeouts'],
           r['gen_us_per_call'], r['gen_cpu_pct'], r['resp_us_per_call'], r['resp_cpu_pct'], r['gen_wakeups_per_call'], r['resp_wakeups_per_call'], r['other_cpu_pct'], wall, r['achieved_cps'], r['rcvbuf_errors'], g.returncode,
           ' NOISY' if r['noisy'] else '',
           ' COUNTER MISMATCH %s' % r['responder_received'] if r.get('counter_mismatch') else ''))
    return r


DISCARDED = []       # runs thrown away because the machine was busy


def quiet_run(gen, rate, duration, opts, resp, rundir, tag):
    """one_run, redone (after a pause) while other processes used more than --max-other-cpu %
    of a core during it; after --retries the last run is kept, marked noisy."""
    for attempt in range(opts.retries + 1):
        r = one_run(gen, rate, duration, opts, resp, rundir, '%s-try%d' % (tag, attempt))
        if not r['noisy'] or attempt == opts.retries:
            return r
        DISCARDED.append(r)
        log('machine busy (other processes %.0f%% of a core): waiting %d s, then redoing the run'
            % (r['other_cpu_pct'], opts.busy_wait))
        time.sleep(opts.busy_wait)


# ---- reports -----------------------------------------------------------------------------------
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return '—' if x is None else ('%.*f' % (nd, x))


def label(gen, opts):
    return LABEL[gen] % opts.sipp_version if gen == 'sipp' else LABEL[gen]


def compare(opts, resp, rundir):
    runs = []
    for k in range(opts.repeat):
        for gen in (GENS if k % 2 == 0 else GENS[::-1]):
            runs.append(quiet_run(gen, opts.rate, opts.duration, opts, resp, rundir, '%s-%d' % (gen, k)))
    summ = {}
    for gen in GENS:
        rs = [r for r in runs if r['generator'] == gen]
        summ[gen] = dict(
            gen_us_per_call=med([r['gen_us_per_call'] for r in rs]),
            gen_us_per_call_all=[r['gen_us_per_call'] for r in rs],
            gen_cpu_pct=med([r['gen_cpu_pct'] for r in rs]),
            resp_us_per_call=med([r['resp_us_per_call'] for r in rs]),
            resp_us_per_call_all=[r['resp_us_per_call'] for r in rs],
            other_cpu_pct=med([r['other_cpu_pct'] for r in rs]),
            gen_wakeups_per_call=med([r['gen_wakeups_per_call'] for r in rs]),
            resp_wakeups_per_call=med([r['resp_wakeups_per_call'] for r in rs]),
            achieved_cps=med([r['achieved_cps'] for r in rs]),
            ok=sum(r['ok'] for r in rs), calls=sum(r['calls'] for r in rs),
            failed=sum(r['failed'] for r in rs), retrans=sum(r['retrans'] for r in rs),
            unexpected=sum(r['unexpected'] for r in rs),
            timeouts=None if gen == 'sipp' else sum(r['timeouts'] for r in rs),
            rcvbuf_errors=sum(r['rcvbuf_errors'] for r in rs),
            counter_mismatches=sum(1 for r in rs if r.get('counter_mismatch')))
    a, b = summ['sipshard-load']['gen_us_per_call'], summ['sipp']['gen_us_per_call']
    ratio = (b / a) if a and b else None
    ra, rb = summ['sipshard-load']['resp_us_per_call'], summ['sipp']['resp_us_per_call']
    md = ['## Call generators at %d calls/s x %d s (%d calls per run), medians of %d alternating runs'
          % (opts.rate, opts.duration, opts.rate * opts.duration, opts.repeat), '',
          '| generator | generator CPU µs/call | all runs | generator CPU % of a core '
          '| responder CPU µs/call | all runs | wake-ups/call gen / resp | achieved /s | ok / calls | failed | retrans '
          '| timeouts | unexpected | rcvbuf errs | other CPU % |',
          '|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for gen in GENS:
        s = summ[gen]
        md.append('| %s | %s | %s | %s | %s | %s | %s / %s | %s | %d / %d | %d | %d | %s | %d | %d | %s |' % (
            label(gen, opts), fmt(s['gen_us_per_call']),
            ', '.join(fmt(x) for x in s['gen_us_per_call_all']), fmt(s['gen_cpu_pct']),
            fmt(s['resp_us_per_call']), ', '.join(fmt(x) for x in s['resp_us_per_call_all']),
            fmt(s['gen_wakeups_per_call'], 2), fmt(s['resp_wakeups_per_call'], 2),
            fmt(s['achieved_cps'], 0), s['ok'], s['calls'], s['failed'], s['retrans'],
            'n/a' if s['timeouts'] is None else s['timeouts'], s['unexpected'],
            s['rcvbuf_errors'], fmt(s['other_cpu_pct'])))
    md += ['', '**Generator CPU per call, SIPp / sipshard load: %s×**; responder CPU per call '
           'under SIPp / under sipshard load: %s×' % (fmt(ratio, 2), fmt(rb / ra if ra and rb else None, 2))]
    return dict(mode='compare', rate=opts.rate, duration=opts.duration, repeat=opts.repeat,
                summary=summ, ratio_gen_cpu_sipp_over_load=ratio,
                ratio_resp_cpu_sipp_over_load=(rb / ra if ra and rb else None), runs=runs), md


def max_rate(opts, resp, rundir):
    runs = []
    verdicts = {}
    md = ['## Highest clean rate per generator, %d s steps, one responder (1 shard)'
          % opts.step_duration, '',
          'Clean: every call successful, 0 failed, 0 retransmissions, 0 unexpected, 0 timeouts '
          '(sipshard load), exit code 0, achieved >= 95 % of the offered rate.', '',
          '| generator | offered /s | achieved /s | ok / calls | failed | retrans | timeouts '
          '| unexpected | generator CPU % | generator µs/call | responder CPU % | other CPU % '
          '| rcvbuf errs | clean |',
          '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for gen in opts.generators:
        fails = 0
        mine = []
        for rate in opts.rates:
            r = quiet_run(gen, rate, opts.step_duration, opts, resp, rundir, 'max-%s-%d' % (gen, rate))
            mine.append(r)
            fails = 0 if r['clean'] else fails + 1
            if fails >= 2:
                log('%s: two unclean steps in a row: stopping' % gen)
                break
            if opts.pause:
                time.sleep(opts.pause)
        runs += mine
        for r in mine:
            md.append('| %s | %d | %s | %d / %d | %d%s | %d | %s | %d | %s | %s | %s | %s | %d | %s |' % (
                label(gen, opts), r['rate'], fmt(r['achieved_cps'], 0), r['ok'], r['calls'],
                r['failed'], ' %s' % json.dumps(r['failed_by_status']) if r['failed_by_status'] else '',
                r['retrans'], 'n/a' if r['timeouts'] is None else r['timeouts'], r['unexpected'],
                fmt(r['gen_cpu_pct']), fmt(r['gen_us_per_call']), fmt(r['resp_cpu_pct']),
                fmt(r['other_cpu_pct']), r['rcvbuf_errors'], 'yes' if r['clean'] else 'no'))
        clean = [r for r in mine if r['clean']]
        best = max(clean, key=lambda r: r['rate']) if clean else None
        if best:
            first_bad = next((r for r in mine if r['rate'] > best['rate']), None)
            verdicts[gen] = dict(rate=best['rate'], achieved_cps=best['achieved_cps'],
                                 gen_cpu_pct=best['gen_cpu_pct'], resp_cpu_pct=best['resp_cpu_pct'],
                                 busiest='generator' if best['gen_cpu_pct'] >= best['resp_cpu_pct']
                                 else 'responder',
                                 limit_above_highest_step=best is mine[-1] and len(mine) == len(opts.rates),
                                 first_unclean=None if not first_bad else dict(
                                     rate=first_bad['rate'], gen_cpu_pct=first_bad['gen_cpu_pct'],
                                     resp_cpu_pct=first_bad['resp_cpu_pct'],
                                     achieved_cps=first_bad['achieved_cps']))
        else:
            verdicts[gen] = None
    md.append('')
    for gen in opts.generators:
        v = verdicts[gen]
        if not v:
            md.append('- **%s: no clean step.**' % label(gen, opts))
            continue
        s = ('- **%s: %d calls/s** clean; there it used %s %% of a core, the responder %s %%'
             % (label(gen, opts), v['rate'], fmt(v['gen_cpu_pct']), fmt(v['resp_cpu_pct'])))
        if v['limit_above_highest_step']:
            s += ' (the highest step was clean: the limit is above it)'
        elif v['first_unclean']:
            f = v['first_unclean']
            s += ('; at %d/s (unclean) %s %% and the responder %s %%, achieved %s/s'
                  % (f['rate'], fmt(f['gen_cpu_pct']), fmt(f['resp_cpu_pct']), fmt(f['achieved_cps'], 0)))
        md.append(s + '.')
    md += ['', 'On a %d-core machine the generator and the responder run on the same cores: '
           'each step measures the pair, and whichever process reaches ~100 %% of a core first '
           'sets the limit.' % os.cpu_count()]
    return dict(mode='max-rate', step_duration=opts.step_duration, rates=opts.rates,
                max_clean=verdicts, runs=runs), md


def machine():
    def first(cmd):
        try:
            o = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (o.stdout + o.stderr).strip().splitlines()[0].strip()
        except (OSError, IndexError, subprocess.SubprocessError):
            return 'unknown'
    cpu = 'unknown'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    return dict(nproc=os.cpu_count(), kernel=platform.release(), cpu=cpu, sipp=first(['sipp', '-v']),
                loadavg=open('/proc/loadavg').read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bin', default='/tmp/sipshard-gen',
                    help='sipshard binary, responder and generator (default %(default)s)')
    ap.add_argument('--rate', type=int, default=2000, help='calls/s (default %(default)s)')
    ap.add_argument('--duration', type=int, default=15, help='s per run: RATE*DURATION calls (default 15)')
    ap.add_argument('--repeat', type=int, default=3, help='alternating rounds (default 3)')
    ap.add_argument('--max-rate', action='store_true', help='step the rate for each generator')
    ap.add_argument('--rates', default='1000,2000,4000,6000,8000,12000,16000,20000',
                    help='--max-rate steps, calls/s (default %(default)s)')
    ap.add_argument('--generators', default=','.join(GENS),
                    help='--max-rate: which generators, in order (default %(default)s)')
    ap.add_argument('--step-duration', type=int, default=10, help='s per --max-rate step (default 10)')
    ap.add_argument('--pause', type=float, default=2.0, help='s between --max-rate steps (default 2)')
    ap.add_argument('--sipp-extra', default='',
                    help='extra SIPp arguments, e.g. "-buff_size 4194304" (default none: SIPp '
                         'sets SO_RCVBUF/SO_SNDBUF to 65535)')
    ap.add_argument('--load-extra', default='', help='extra `sipshard load` arguments')
    ap.add_argument('--check-counters', action='store_true',
                    help='responder with --metrics: check its INVITE/ACK/BYE counters per run')
    ap.add_argument('--json', help='write the results as JSON to this file')
    ap.add_argument('--md', help='also write the markdown (with a header) to this file')
    ap.add_argument('--max-other-cpu', type=float, default=25.0,
                    help='redo a run when other processes used more than this %% of a core '
                         'during it (default %(default)s)')
    ap.add_argument('--retries', type=int, default=3, help='redos per run (default 3)')
    ap.add_argument('--busy-wait', type=int, default=60, help='s to wait before a redo (default 60)')
    ap.add_argument('--keep', action='store_true', help='keep the run directory (logs)')
    opts = ap.parse_args()
    opts.rates = [int(x) for x in opts.rates.split(',') if x.strip()]
    opts.generators = [g.strip() for g in opts.generators.split(',') if g.strip()]
    if not opts.generators or any(g not in GENS for g in opts.generators):
        sys.exit('--generators: a comma list of %s' % ', '.join(GENS))
    if not shutil.which('sipp'):
        sys.exit('sipp not found')
    if not os.access(opts.bin, os.X_OK):
        sys.exit('%s is not executable' % opts.bin)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rundir = tempfile.mkdtemp(prefix='generator-vs-sipp-')
    log('run directory %s' % rundir)
    started = datetime.datetime.now().astimezone()
    m0 = machine()
    v = re.search(r'v?(\d+(?:\.\d+)+)', m0['sipp'])
    opts.sipp_version = v.group(1) if v else ''
    ok = False
    resp = None
    try:
        resp = Responder(opts, rundir)
        res, md = (max_rate if opts.max_rate else compare)(opts, resp, rundir)
        ok = True
    finally:
        if resp:
            resp.stop()
        cleanup()
        if not ok or opts.keep:
            log('logs kept in %s' % rundir)
        else:
            shutil.rmtree(rundir, ignore_errors=True)
    m1 = machine()
    cmd = ' '.join(['python3', sys.argv[0]] + sys.argv[1:])
    noisy = [r for r in res['runs'] if r['noisy']]
    res.update(discarded_noisy_runs=DISCARDED, command=cmd,
               started=started.isoformat(timespec='seconds'),
               machine=dict(m0, loadavg_after=m1['loadavg']), binary=opts.bin,
               responder_command=' '.join(resp.cmd))
    example = {g: next(r['command'] for r in res['runs'] if r['generator'] == g)
               for g in GENS if any(r['generator'] == g for r in res['runs'])}
    header = ['# sipshard load vs SIPp as call generators' + (' — max rate' if opts.max_rate else ''), '',
              '- command: `%s`' % cmd,
              '- date: %s' % started.strftime('%Y-%m-%d %H:%M %Z'),
              '- machine: nproc %d, kernel %s, %s, %s; loadavg before %s, after %s'
              % (m0['nproc'], m0['kernel'], m0['cpu'], m0['sipp'], ' '.join(m0['loadavg']),
                 ' '.join(m1['loadavg'])),
              '- target (one process for the whole run): `%s`' % ' '.join(resp.cmd)]
    for g, c in example.items():
        header.append('- %s, e.g.: `%s`' % (label(g, opts), c))
    header += ['- generator CPU = utime+stime of the generator process (os.wait4); responder CPU = '
               'its /proc utime+stime over the same interval; "other CPU %" = every other process '
               'on the machine meanwhile (noise)',
               '- runs during which other processes used > %g %% of a core were redone: %d redone%s'
               % (opts.max_other_cpu, len(DISCARDED),
                  '; **%d kept runs are still noisy** (see "other CPU %%")' % len(noisy) if noisy else '')]
    if not opts.max_rate:
        header.append('- figures are medians of %d alternating runs per generator (order swapped '
                      'every round)' % opts.repeat)
    header.append('')
    text = '\n'.join(header + md) + '\n'
    print(text)
    if opts.json:
        with open(opts.json, 'w') as f:
            json.dump(res, f, indent=1)
            f.write('\n')
    if opts.md:
        with open(opts.md, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        cleanup()
        sys.exit(130)

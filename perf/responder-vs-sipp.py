#!/usr/bin/env python3
"""sipshard --mode responder vs a SIPp UAS, answering the same SIPp UAC calls (stdlib only).

Default mode: for each of K rounds (--repeat), runs the two targets one after the other
(alternating the order each round), each on its own free UDP port on 127.0.0.1:

  responder  BIN --mode responder --shards 1 --listen udp:127.0.0.1:PORT --log warn
  sipp-uas   sipp -sn uas -p PORT -i 127.0.0.1

and drives it with `sipp 127.0.0.1:PORT -sn uac -r RATE -m RATE*DURATION ...`. Measured per
run: the target's CPU (utime+stime from /proc/PID/stat) from just before the UAC starts to
just after it exits, divided by the successful calls; the UAC's SuccessfulCall(C),
FailedCall(C), Retransmissions(C) and FailedUnexpectedMessage(C) from the last line of its
-trace_stat CSV; the UAC's own CPU; the CPU every other process on the machine used meanwhile
(noise indicator); UdpRcvbufErrors. Reports the medians and the ratio SIPp-UAS/responder.

--max-rate: responder only, steps the UAC rate (--rates, --step-duration s each) and reports
the highest rate at which SIPp ended with every call successful, 0 failed and 0
retransmissions, together with who was busiest at that rate (the UAC's CPU %% of one core vs
the responder's).

The UAC's SIPp sets SO_RCVBUF to its -buff_size, 65535 bytes by default: above ~5,000 calls/s
that socket overflows (the table shows the UDP drops per socket) long before either process
saturates a core; `--uac-extra=-buff_size 4194304` lifts that limit (net.core.rmem_max permitting).

A run during which other processes used more than --max-other-cpu % of a core is redone after
--busy-wait s (at most --retries times); the discarded runs are kept in the JSON.

This script does not take /tmp/bench.lock itself: run it under `flock /tmp/bench.lock`.
"""
import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TCK = os.sysconf('SC_CLK_TCK')
CHILDREN = []          # Popen objects still to be stopped on the way out


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


# ---- /proc -------------------------------------------------------------------------------------
def proc_ticks(pid):
    """utime+stime of one process (all its threads, live and exited), in clock ticks."""
    with open('/proc/%d/stat' % pid) as f:
        rest = f.read().rsplit(')', 1)[1].split()
    return int(rest[11]) + int(rest[12])


def busy_ticks():
    """(busy, steal): all CPUs' busy ticks (user+nice+system+irq+softirq+steal) and the steal
    part alone (time the hypervisor gave to someone else), from /proc/stat."""
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


def udp_drops():
    """{local port: drops} of the IPv4/IPv6 UDP sockets on 127.0.0.1 / any address."""
    out = {}
    for fn in ('/proc/net/udp', '/proc/net/udp6'):
        try:
            with open(fn) as f:
                next(f)
                for line in f:
                    v = line.split()
                    port = int(v[1].rsplit(':', 1)[1], 16)
                    out[port] = out.get(port, 0) + int(v[-1])
        except (OSError, ValueError, IndexError):
            pass
    return out


def child_pid(pid):
    """The (single) child of `timeout`: the sipp process whose CPU we read."""
    for tid in os.listdir('/proc/%d/task' % pid):
        try:
            with open('/proc/%d/task/%s/children' % (pid, tid)) as f:
                kids = f.read().split()
        except OSError:
            continue
        if kids:
            return int(kids[0])
    return None


def free_ports(n, lo=10000, hi=29999):
    """n distinct UDP ports below 30000 that nothing has bound (bind-tested on 127.0.0.1).
    Ports next to each other are avoided too, for SIPp's media port (port+... is not used by
    the embedded scenarios, but keep a margin)."""
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 5000:
            raise RuntimeError('no free UDP port found in %d-%d' % (lo, hi))
        p = random.randrange(lo, hi, 2)
        if any(abs(p - q) < 4 for q in out) or udp_bound(p) or udp_bound(p + 1):
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(('127.0.0.1', p))
        except OSError:
            continue
        finally:
            s.close()
        out.append(p)
    return out


# ---- processes ---------------------------------------------------------------------------------
def spawn(cmd, out_path, cwd):
    out = open(out_path, 'w')
    p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    p.cmd = cmd
    CHILDREN.append(p)
    return p


def stop(p, grace=5.0):
    """SIGTERM the process we started (by PID), wait, SIGKILL its process group if it lingers."""
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)    # its own session: only what we started
            except ProcessLookupError:
                pass
            p.wait(grace)
    else:
        # `timeout` gone but a grandchild may survive it (it should not): clean the group
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p in CHILDREN:
        CHILDREN.remove(p)


def cleanup(*_):
    for p in list(CHILDREN):
        try:
            stop(p, 2.0)
        except Exception as e:            # keep cleaning the others
            log('cleanup of pid %d: %s' % (p.pid, e))


def stats_csv(path):
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
                created=g('TotalCallCreated'), outofcall=g('OutOfCallMsgs(C)'))


def count_lines(path):
    try:
        with open(path, errors='replace') as f:
            return sum(1 for l in f if l.strip())
    except OSError:
        return 0


# ---- one run -----------------------------------------------------------------------------------
def target_cmd(target, port, opts, lifetime):
    if target == 'responder':
        return [opts.bin, '--mode', 'responder', '--shards', '1',
                '--listen', 'udp:127.0.0.1:%d' % port, '--log', 'warn']
    return ['timeout', '-k', '5', '%ds' % lifetime, 'sipp', '-sn', 'uas', '-i', '127.0.0.1',
            '-p', str(port), '-nostdin'] + opts.uas_extra.split()


def one_run(target, rate, duration, opts, rundir, tag):
    calls = rate * duration
    port, uac_port = free_ports(2)
    d = os.path.join(rundir, tag)
    os.makedirs(d)
    lifetime = duration * 4 + 180
    srv = spawn(target_cmd(target, port, opts, lifetime), os.path.join(d, 'target.out'), d)
    try:
        deadline = time.time() + 10
        while not udp_bound(port):
            if srv.poll() is not None or time.time() > deadline:
                raise RuntimeError('%s did not bind udp 127.0.0.1:%d (rc %s), see %s'
                                   % (target, port, srv.poll(), d))
            time.sleep(0.02)
        cpu_pid = srv.pid if target == 'responder' else child_pid(srv.pid)
        if cpu_pid is None:
            raise RuntimeError('no sipp process under timeout pid %d' % srv.pid)
        time.sleep(0.3)

        uac = ['timeout', '-k', '5', '%ds' % (duration * 3 + 150),
               'sipp', '127.0.0.1:%d' % port, '-sn', 'uac', '-i', '127.0.0.1',
               '-p', str(uac_port), '-r', str(rate), '-m', str(calls), '-nostdin',
               '-trace_stat', '-stf', 'uac_stat.csv', '-fd', '1', '-timeout', '120s',
               '-trace_err', '-error_file', 'uac_err.log'] + opts.uac_extra.split()
        t0_ticks, (t0_busy, t0_steal), t0_rb = proc_ticks(cpu_pid), busy_ticks(), rcvbuf_errors()
        t0 = time.time()
        u = spawn(uac, os.path.join(d, 'uac.out'), d)
        # poll: the per-socket drop counters (/proc/net/udp) of the UAC's socket vanish with it
        drops = {}
        while True:
            pid, status, ru = os.wait4(u.pid, os.WNOHANG)
            if pid:
                break
            now = udp_drops()
            for q in (port, uac_port):
                if q in now:
                    drops[q] = now[q]
            time.sleep(0.2)
        now = udp_drops()
        if port in now:
            drops[port] = now[port]
        u.returncode = os.waitstatus_to_exitcode(status)
        CHILDREN.remove(u)
        wall = time.time() - t0
        t1_ticks, (t1_busy, t1_steal), t1_rb = proc_ticks(cpu_pid), busy_ticks(), rcvbuf_errors()
        if srv.poll() is not None:
            raise RuntimeError('%s exited during the run (rc %s), see %s' % (target, srv.returncode, d))
    finally:
        stop(srv)

    st = stats_csv(os.path.join(d, 'uac_stat.csv'))
    tgt_s = (t1_ticks - t0_ticks) / TCK
    uac_s = ru.ru_utime + ru.ru_stime         # timeout + its reaped child sipp
    other_s = (t1_busy - t0_busy) / TCK - tgt_s - uac_s
    r = dict(target=target, rate=rate, calls=calls, port=port, uac_rc=u.returncode, **st,
             wall_s=round(wall, 2), achieved_cps=round(st['ok'] / wall, 1) if wall else 0,
             target_cpu_s=round(tgt_s, 3),
             target_us_per_call=round(tgt_s * 1e6 / st['ok'], 2) if st['ok'] else None,
             target_cpu_pct=round(100 * tgt_s / wall, 1),
             uac_cpu_s=round(uac_s, 3), uac_cpu_pct=round(100 * uac_s / wall, 1),
             other_cpu_pct=round(100 * max(other_s, 0) / wall, 1),
             steal_pct=round(100 * (t1_steal - t0_steal) / TCK / wall, 1),
             rcvbuf_errors=t1_rb - t0_rb,
             target_socket_drops=drops.get(port, 0),
             uac_socket_drops_at_least=drops.get(uac_port, 0),   # last sample before it exited
             uac_err_lines=count_lines(os.path.join(d, 'uac_err.log')),
             target_log_lines=count_lines(os.path.join(d, 'target.out'))
             if target == 'responder' else None,
             dir=d)
    r['noisy'] = r['other_cpu_pct'] > opts.max_other_cpu
    r['clean'] = (r['ok'] == calls and r['failed'] == 0 and r['retrans'] == 0
                  and r['unexpected'] == 0 and u.returncode == 0)
    log('%-9s %5d/s: ok %d/%d failed %d retrans %d unexp %d | %s µs/call, target %.0f%% '
        'uac %.0f%% other %.0f%% (steal %.0f%%) | %.1f s, rcvbuf errs %d (target socket %d, '
        'uac socket >= %d), rc %d%s'
        % (target, rate, r['ok'], calls, r['failed'], r['retrans'], r['unexpected'],
           r['target_us_per_call'], r['target_cpu_pct'], r['uac_cpu_pct'], r['other_cpu_pct'],
           r['steal_pct'], wall, r['rcvbuf_errors'], r['target_socket_drops'],
           r['uac_socket_drops_at_least'], u.returncode,
           ' NOISY' if r['noisy'] else ''))
    return r


DISCARDED = []       # runs thrown away because the machine was busy


def quiet_run(target, rate, duration, opts, rundir, tag):
    """one_run, redone (after a pause) while other processes used more than --max-other-cpu %
    of a core during it; after --retries the last run is kept, marked noisy."""
    for attempt in range(opts.retries + 1):
        r = one_run(target, rate, duration, opts, rundir, '%s-try%d' % (tag, attempt))
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


def compare(opts, rundir):
    runs = []
    order = ['responder', 'sipp-uas']
    for k in range(opts.repeat):
        for t in (order if k % 2 == 0 else order[::-1]):
            runs.append(quiet_run(t, opts.rate, opts.duration, opts, rundir, '%s-%d' % (t, k)))
    summ = {}
    for t in order:
        rs = [r for r in runs if r['target'] == t]
        summ[t] = dict(
            us_per_call=med([r['target_us_per_call'] for r in rs]),
            us_per_call_all=[r['target_us_per_call'] for r in rs],
            target_cpu_pct=med([r['target_cpu_pct'] for r in rs]),
            uac_cpu_pct=med([r['uac_cpu_pct'] for r in rs]),
            other_cpu_pct=med([r['other_cpu_pct'] for r in rs]),
            ok=sum(r['ok'] for r in rs), calls=sum(r['calls'] for r in rs),
            failed=sum(r['failed'] for r in rs), retrans=sum(r['retrans'] for r in rs),
            unexpected=sum(r['unexpected'] for r in rs),
            rcvbuf_errors=sum(r['rcvbuf_errors'] for r in rs))
    a, b = summ['responder']['us_per_call'], summ['sipp-uas']['us_per_call']
    ratio = (b / a) if a and b else None
    md = ['## Responder vs SIPp UAS, %d calls/s x %d s, medians of %d alternating runs'
          % (opts.rate, opts.duration, opts.repeat), '',
          '| target | CPU µs/call (median) | all runs | target CPU % | UAC CPU % | other CPU % '
          '| ok / calls | failed | retrans | unexpected | rcvbuf errs |',
          '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|']
    for t in order:
        s = summ[t]
        md.append('| %s | %s | %s | %s | %s | %s | %d / %d | %d | %d | %d | %d |' % (
            'sipshard responder (1 shard)' if t == 'responder' else 'SIPp UAS', fmt(s['us_per_call']),
            ', '.join(fmt(x) for x in s['us_per_call_all']), fmt(s['target_cpu_pct']),
            fmt(s['uac_cpu_pct']), fmt(s['other_cpu_pct']), s['ok'], s['calls'], s['failed'],
            s['retrans'], s['unexpected'], s['rcvbuf_errors']))
    md += ['', '**SIPp UAS / responder CPU per call: %s×**' % fmt(ratio, 2)]
    return dict(mode='compare', rate=opts.rate, duration=opts.duration, repeat=opts.repeat,
                summary=summ, ratio_sipp_uas_over_responder=ratio, runs=runs), md


def max_rate(opts, rundir):
    runs = []
    fails = 0
    for rate in opts.rates:
        r = quiet_run('responder', rate, opts.step_duration, opts, rundir, 'max-%d' % rate)
        runs.append(r)
        fails = 0 if r['clean'] else fails + 1
        if fails >= 2:
            log('two unclean steps in a row: stopping')
            break
    clean = [r for r in runs if r['clean']]
    best = max(clean, key=lambda r: r['rate']) if clean else None
    md = ['## Responder (1 shard) max clean rate, %d s steps' % opts.step_duration, '',
          '| UAC rate /s | achieved /s | ok / calls | failed | retrans | unexpected '
          '| responder µs/call | responder CPU % | SIPp UAC CPU % | other CPU % '
          '| UDP drops: responder socket / UAC socket (≥) | clean |',
          '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for r in runs:
        md.append('| %d | %s | %d / %d | %d | %d | %d | %s | %s | %s | %s | %d / %d | %s |' % (
            r['rate'], fmt(r['achieved_cps'], 0), r['ok'], r['calls'], r['failed'], r['retrans'],
            r['unexpected'], fmt(r['target_us_per_call']), fmt(r['target_cpu_pct']),
            fmt(r['uac_cpu_pct']), fmt(r['other_cpu_pct']), r['target_socket_drops'],
            r['uac_socket_drops_at_least'], 'yes' if r['clean'] else 'no'))
    md.append('')
    verdict = None
    if best:
        who = 'the SIPp UAC' if best['uac_cpu_pct'] >= best['target_cpu_pct'] else 'the responder'
        short = best['achieved_cps'] < 0.95 * best['rate']
        verdict = dict(rate=best['rate'], achieved_cps=best['achieved_cps'],
                       uac_cpu_pct=best['uac_cpu_pct'], responder_cpu_pct=best['target_cpu_pct'],
                       busiest=who, rate_short=short, highest_step_tried=runs[-1]['rate'])
        md.append('**Highest clean rate: %d calls/s** (achieved %s/s%s); there the SIPp UAC used '
                  '%s %% of a core and the responder %s %%: the busiest process is %s.' % (
                      best['rate'], fmt(best['achieved_cps'], 0),
                      ', short of the target: the UAC could not keep up' if short else '',
                      fmt(best['uac_cpu_pct']), fmt(best['target_cpu_pct']), who))
        if best is runs[-1]:
            md.append('The highest step tried was clean: the limit is above it.')
    else:
        md.append('**No clean step.**')
    return dict(mode='max-rate', step_duration=opts.step_duration, rates=opts.rates,
                max_clean=verdict, runs=runs), md


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
    ap.add_argument('--bin', default='/tmp/sipshard-resp', help='sipshard binary (default %(default)s)')
    ap.add_argument('--rate', type=int, default=1000, help='UAC calls/s (default %(default)s)')
    ap.add_argument('--duration', type=int, default=20, help='s per run: -m RATE*DURATION (default 20)')
    ap.add_argument('--repeat', type=int, default=3, help='alternating rounds (default 3)')
    ap.add_argument('--max-rate', action='store_true', help='responder only: step the rate')
    ap.add_argument('--rates', default='1000,2000,3000,4000,6000,8000',
                    help='--max-rate steps, calls/s (default %(default)s)')
    ap.add_argument('--step-duration', type=int, default=10, help='s per --max-rate step (default 10)')
    ap.add_argument('--uac-extra', default='',
                    help='extra SIPp UAC arguments, e.g. "-buff_size 4194304" (default none: '
                         'SIPp sets SO_RCVBUF/SO_SNDBUF to 65535)')
    ap.add_argument('--uas-extra', default='',
                    help='extra SIPp UAS arguments, e.g. "-buff_size 4194304" (default none)')
    ap.add_argument('--json', help='write the results as JSON to this file')
    ap.add_argument('--md', help='also write the markdown (with a header) to this file')
    ap.add_argument('--max-other-cpu', type=float, default=25.0,
                    help='redo a run when other processes used more than this %% of a core '
                         'during it (default %(default)s)')
    ap.add_argument('--retries', type=int, default=3, help='redos per run (default 3)')
    ap.add_argument('--busy-wait', type=int, default=60, help='s to wait before a redo (default 60)')
    ap.add_argument('--keep', action='store_true', help='keep the run directory (SIPp logs)')
    opts = ap.parse_args()
    opts.rates = [int(x) for x in opts.rates.split(',') if x.strip()]
    for tool in ('sipp', 'timeout'):
        if not shutil.which(tool):
            sys.exit('%s not found' % tool)
    if not os.access(opts.bin, os.X_OK):
        sys.exit('%s is not executable' % opts.bin)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rundir = tempfile.mkdtemp(prefix='responder-vs-sipp-')
    log('run directory %s' % rundir)
    started = datetime.datetime.now().astimezone()
    m0 = machine()
    ok = False
    try:
        res, md = (max_rate if opts.max_rate else compare)(opts, rundir)
        ok = True
    finally:
        cleanup()
        if not ok or opts.keep:
            log('logs kept in %s' % rundir)
        else:
            shutil.rmtree(rundir, ignore_errors=True)
    m1 = machine()
    cmd = ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])
    noisy = [r for r in res['runs'] if r['noisy']]
    res.update(discarded_noisy_runs=DISCARDED, command=cmd, started=started.isoformat(timespec='seconds'),
               machine=dict(m0, loadavg_after=m1['loadavg']), binary=opts.bin)
    header = ['# sipshard responder vs SIPp UAS', '',
              '- command: `%s`' % cmd,
              '- date: %s' % started.strftime('%Y-%m-%d %H:%M %Z'),
              '- machine: nproc %d, kernel %s, %s, %s; loadavg before %s, after %s'
              % (m0['nproc'], m0['kernel'], m0['cpu'], m0['sipp'], ' '.join(m0['loadavg']),
                 ' '.join(m1['loadavg'])),
              '- CPU = utime+stime of the target process from /proc over the UAC run; '
              '"other CPU %" = all other processes on the machine meanwhile (noise)',
              '- runs during which other processes used > %g %% of a core were redone: %d redone%s'
              % (opts.max_other_cpu, len(DISCARDED),
                 '; **%d kept runs are still noisy** (see "other CPU %%")' % len(noisy) if noisy else ''),
              '']
    if not opts.max_rate:
        header.insert(-1, '- figures are medians of %d alternating runs per target' % opts.repeat)
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

#!/usr/bin/env python3
"""Reload of a 1,000,000-prefix dial plan under load (issue 15), side by side with the same
load without reloads.

For each mode (steady, reload) it starts sipshard (--shards 2) with a plan of PREFIXES random
routes plus the route the calls use (+49 -> the SIPp UAS as a trunk), drives SIPp's uac.xml at
RATE calls/s for DURATION s to +4930123456, and in the reload mode swaps in a different
million-prefix plan with SIGHUP RELOADS times during the calls. It reports SIPp's successful,
failed and retransmitted calls and its INVITE->200 response-time distribution, the server's
in-server latency quantiles (receive to send, µs), and for each reload how long the server took
from SIGHUP to "reloaded" (parse and compile happen on the main thread, at nice 19, off the
shards; the old plan is freed there too).

The whole run holds /tmp/bench.lock (flock), as every load in this repository does.

Usage: python3 perf/reload-plan.py --bin target/release/sipshard [--rate 1000]
       [--duration 40] [--reloads 3] [--prefixes 1000000]
"""
import argparse
import fcntl
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

PERF = os.path.dirname(os.path.abspath(__file__))
SCEN = os.path.join(PERF, 'scenarios')
IP = '127.0.0.1'
PORT = int(os.environ.get('PERF_RELOAD_PORT', 5170))
SIPP_PORT = PORT + 2
UAS_PORT = PORT + 10
METRICS = '127.0.0.1:%d' % (PORT + 400)
WORK = os.environ.get('PERF_WORK', '/tmp/sipshard-perf') + '/reload'
NUMBER = '+4930123456'


def log(msg):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def plan(path, prefixes, seed):
    """A TOML dial plan: the trunk, the +49 route and `prefixes` random +1... routes."""
    rng = random.Random(seed)
    seen = set()
    with open(path, 'w') as f:
        f.write('[[trunk]]\nname = "gw"\naddress = "%s:%d"\ncheck_interval_ms = 0\n\n'
                '[[route]]\nprefix = "+49"\ntrunks = ["gw"]\n\n' % (IP, UAS_PORT))
        while len(seen) < prefixes:
            p = '+1' + ''.join(rng.choice('0123456789') for _ in range(rng.randint(3, 11)))
            if p in seen:
                continue
            seen.add(p)
            f.write('[[route]]\nprefix = "%s"\ntrunks = ["gw"]\n' % p)


def max_socket():
    """SIPp's -t un opens a socket per call: stay under the open-files limit."""
    return min(50000, int(subprocess.check_output(['sh', '-c', 'ulimit -n'])) - 1000)


def scrape():
    text = urllib.request.urlopen('http://%s/metrics' % METRICS, timeout=2).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith('#'):
            k, _, v = line.rpartition(' ')
            out[k] = float(v)
    return out


def sipp_stats(path):
    lines = [l for l in open(path).read().splitlines() if l.strip()]
    head, last = lines[0].split(';'), lines[-1].split(';')
    col = lambda name: last[head.index(name)]
    return dict(ok=int(col('SuccessfulCall(C)')), failed=int(col('FailedCall(C)')),
                retrans=int(col('Retransmissions(C)')))


def rtt_quantiles(path):
    """SIPp -trace_rtt (Date_ms;response_time_ms;rtd_no): INVITE->200 (rtd 1) in ms."""
    values = []
    for line in open(path).read().splitlines()[1:]:
        parts = line.split(';')
        if len(parts) >= 3 and parts[2].strip() == '1':
            values.append(float(parts[1]))
    values.sort()
    q = lambda p: values[min(len(values) - 1, int(p * len(values)))] if values else None
    return dict(n=len(values), p50=q(0.5), p99=q(0.99), p999=q(0.999),
                max=values[-1] if values else None)


def run(mode, opts, plans):
    rundir = os.path.join(WORK, mode)
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    cfg = os.path.join(rundir, 'plan.toml')
    shutil.copy(plans[0], cfg)
    csv = os.path.join(rundir, 'number.csv')
    open(csv, 'w').write('SEQUENTIAL\n%s;\n' % NUMBER)
    slog = open(os.path.join(rundir, 'server.log'), 'w')
    t0 = time.time()
    srv = subprocess.Popen([opts.bin, '--listen', 'udp:%s:%d' % (IP, PORT), '--domain', IP,
                            '--shards', '2', '--metrics', METRICS, '--config', cfg,
                            '--log', 'info'], stdout=slog, stderr=subprocess.STDOUT)
    while True:
        try:
            scrape()
            break
        except OSError:
            if srv.poll() is not None or time.time() - t0 > 120:
                raise RuntimeError('sipshard did not start: see %s' % slog.name)
            time.sleep(0.2)
    log('%s: sipshard up with %d prefixes after %.1f s' % (mode, opts.prefixes, time.time() - t0))
    try:
        return load(mode, opts, plans, rundir, cfg, csv, slog, srv)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def load(mode, opts, plans, rundir, cfg, csv, slog, srv):
    total = opts.rate * opts.duration
    uas = subprocess.Popen(['sipp', '-sf', os.path.join(SCEN, 'uas.xml'), '-i', IP,
                            '-p', str(UAS_PORT), '-t', 'u1', '-m', str(total), '-nostdin',
                            '-buff_size', '4194304', '-trace_stat', '-stf', 'uas_stat.csv',
                            '-fd', '1'], cwd=rundir, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    uac = subprocess.Popen(['sipp', '%s:%d' % (IP, PORT), '-sf', os.path.join(SCEN, 'uac.xml'),
                            '-inf', csv, '-i', IP, '-p', str(SIPP_PORT), '-t', 'un',
                            '-r', str(opts.rate), '-m', str(total), '-d', '100', '-nostdin',
                            '-max_socket', str(max_socket()),
                            '-buff_size', '4194304', '-trace_stat', '-stf', 'uac_stat.csv',
                            '-trace_rtt', '-rtt_freq', '1', '-fd', '1',
                            '-timeout', '%ds' % (opts.duration * 3 + 30)],
                           cwd=rundir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reload_s = []
    if mode == 'reload':
        step = opts.duration / (opts.reloads + 1)
        for i in range(opts.reloads):
            time.sleep(step)
            shutil.copy(plans[(i + 1) % len(plans)] + '', cfg + '.new')
            os.rename(cfg + '.new', cfg)
            before = open(slog.name).read().count('reloaded')
            sent = time.time()
            srv.send_signal(signal.SIGHUP)
            while open(slog.name).read().count('reloaded') == before:
                if time.time() - sent > 60:
                    raise RuntimeError('no "reloaded" within 60 s: see %s' % slog.name)
                time.sleep(0.05)
            reload_s.append(round(time.time() - sent, 2))
            log('%s: reload %d took %.2f s' % (mode, i + 1, reload_s[-1]))
    uac.wait()
    try:
        uas.wait(timeout=60)
    except subprocess.TimeoutExpired:
        uas.kill()
        uas.wait()
    m = scrape()
    srv.send_signal(signal.SIGTERM)
    srv.wait(timeout=20)
    rtt = [f for f in os.listdir(rundir) if f.endswith('_rtt.csv')]
    q = {k.split('"')[1]: int(v) for k, v in m.items()
         if k.startswith('sipshard_latency_us_quantile')}
    errors = open(slog.name).read().count('ERROR')
    return dict(mode=mode, sipp=sipp_stats(os.path.join(rundir, 'uac_stat.csv')),
                uas=sipp_stats(os.path.join(rundir, 'uas_stat.csv')),
                rtt_ms=rtt_quantiles(os.path.join(rundir, rtt[0])) if rtt else None,
                latency_us=q, reload_s=reload_s, errors=errors, rundir=rundir)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--bin', required=True)
    ap.add_argument('--rate', type=int, default=1000)
    ap.add_argument('--duration', type=int, default=40)
    ap.add_argument('--reloads', type=int, default=3)
    ap.add_argument('--prefixes', type=int, default=1000000)
    opts = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    plans = []
    for seed in (1, 2):
        path = os.path.join(WORK, 'plan-%d-%d.toml' % (opts.prefixes, seed))
        if not os.path.exists(path):
            log('writing %s' % path)
            plan(path + '.tmp', opts.prefixes, seed)
            os.rename(path + '.tmp', path)
        plans.append(path)
    lock = open('/tmp/bench.lock', 'w')
    fcntl.flock(lock, fcntl.LOCK_EX)
    results = [run(mode, opts, plans) for mode in ('steady', 'reload')]
    print('| mode | calls ok | failed | retrans | INVITE->200 ms p50 / p99 / p99.9 / max '
          '| in-server µs p50 / p99 / p99.9 | reloads (s from SIGHUP to reloaded) |')
    print('|---|---|---|---|---|---|---|')
    for r in results:
        s, t, l = r['sipp'], r['rtt_ms'] or {}, r['latency_us']
        print('| %s | %d | %d | %d | %s / %s / %s / %s | %s / %s / %s | %s |' % (
            r['mode'], s['ok'], s['failed'], s['retrans'], t.get('p50'), t.get('p99'),
            t.get('p999'), t.get('max'), l.get('0.5'), l.get('0.99'), l.get('0.999'),
            ', '.join(str(x) for x in r['reload_s']) or '-'))
    print('\nrate %d calls/s, %d s, %d prefixes, %d reloads; run dirs under %s'
          % (opts.rate, opts.duration, opts.prefixes, opts.reloads, WORK))


if __name__ == '__main__':
    main()

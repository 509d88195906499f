#!/usr/bin/env python3
"""TLS handshakes per server CPU second, full and resumed, sipshard against Kamailio (issue 16).

For each round and target (sipshard --shards 1, --shards 2, Kamailio 5.6 with its tls module
and OpenSSL; the servers, certificate and Kamailio config are perf/lib/lab.py's PERF_TLS=1
setup: one EC P-256 certificate made with openssl, perf/kamailio/registrar.cfg) the server is
started once and `examples/tls_handshakes` (rustls client) runs four cases against its TLS
port one after another: TLS 1.3 and TLS 1.2, each with full handshakes (no resumption) and
with resumption (every connection resumes the session the previous one left: tickets, or
session IDs where the server gives no ticket). A connection is a handshake, a CRLF ping and its
pong (the server's SIP layer answers it; reading it also collects TLS 1.3 tickets) and a
close_notify. The client paces connections at --rate per second for --count connections.

Per case: server CPU (utime+stime of all its threads/processes from /proc, end minus start of
the client run) per completed handshake, handshakes per server CPU second, the fraction the
client saw resumed (rustls' handshake kind) and failures. Kamailio runs with
`-A TLS_SESSION_CACHE` (modparam tls session_cache=1) so that it can resume by session ID too.
Rounds alternate the target order; medians over rounds.

Each server run holds the /tmp/bench.lock flock (lab.Lock). Writes
perf/results/DATE-tls-handshakes.{json,md} (--out to change).

Usage: perf/tls-handshakes.py [--rounds 3] [--count 3000] [--rate 300]
       [--targets sipshard-1,sipshard-2,kamailio] [--out PREFIX]
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

os.environ['PERF_TRANSPORT'] = 'tn'
os.environ['PERF_TLS'] = '1'
os.environ.setdefault('PERF_KAM_ARGS', '-A TLS_SESSION_CACHE')
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, 'lib'))
import lab  # noqa: E402

CASES = [('1.3', 'off'), ('1.3', 'on'), ('1.2', 'off'), ('1.2', 'on')]
TICK = os.sysconf('SC_CLK_TCK')


def case_name(tls, resume):
    return 'TLS %s %s' % (tls, 'resumed' if resume == 'on' else 'full')


def run_target(target, args, bins, rnd):
    rundir = os.path.join(lab.WORK, 'tls-handshakes', target, 'round%d' % rnd)
    shutil.rmtree(rundir, ignore_errors=True)
    os.makedirs(rundir)
    out = []
    with lab.Lock():
        lab.check_ports()
        srv = lab.Server(target, 'reg', 1, rundir, bins)
        try:
            srv.start()
            for tls, resume in CASES:
                t0, w0 = srv.ticks(), time.time()
                p = subprocess.run([bins['client'], '%s:%d' % (lab.IP, lab.TLS_PORT),
                                    '--count', str(args.count), '--rate', str(args.rate),
                                    '--tls', tls, '--resume', resume],
                                   capture_output=True, text=True, timeout=args.count + 60)
                t1, w1 = srv.ticks(), time.time()
                try:
                    c = json.loads(p.stdout.strip().splitlines()[-1])
                except (IndexError, ValueError):
                    raise RuntimeError('client failed: %s %s' % (p.stdout, p.stderr))
                cpu_s = (t1 - t0) / TICK
                r = dict(target=target, round=rnd, case=case_name(tls, resume), tls=tls,
                         resume=resume == 'on', ok=c['ok'], resumed=c['resumed'],
                         failed=c['failed'], first_error=c['first_error'],
                         client_elapsed=c['elapsed'], wall_s=round(w1 - w0, 2),
                         server_cpu_s=round(cpu_s, 3),
                         cpu_us_per_handshake=round(cpu_s * 1e6 / c['ok'], 1) if c['ok'] else None,
                         handshakes_per_cpu_s=round(c['ok'] / cpu_s) if cpu_s else None,
                         server_cmd=' '.join(srv.cmd))
                lab.log('%-10s %-16s ok=%d resumed=%d failed=%d cpu=%s us/handshake %s'
                        % (target, r['case'], r['ok'], r['resumed'], r['failed'],
                           r['cpu_us_per_handshake'],
                           ('first error: %s' % r['first_error']) if r['failed'] else ''))
                out.append(r)
        finally:
            srv.stop()
    return out


def machine_line():
    m = lab.machine()
    return '%s, %s cores, kernel %s, Kamailio %s' % (m['cpu'], m['cores'], m['kernel'],
                                                     m['kamailio'])


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def report(trials, args, cmd):
    targets = [t for t in args.targets.split(',')]
    lines = ['# TLS handshakes: server CPU per handshake, full and resumed', '',
             'Command: `%s`' % cmd, '',
             'Date: %s; %s. Client: examples/tls_handshakes (rustls 0.23), %d connections per '
             'case at %d/s, each a handshake, a CRLF ping and its pong, and close_notify. '
             'Server CPU: utime+stime of all its threads or processes over the client run. '
             'Medians over %d rounds (targets alternate).' % (
                 datetime.date.today().isoformat(), machine_line(), args.count, args.rate, args.rounds), '',
             '| case | ' + ' | '.join('%s µs/handshake (handshakes per CPU s)' % t
                                     for t in targets) + ' | resumed share | failed |',
             '|---|' + '---:|' * len(targets) + '---|---|']
    for tls, resume in CASES:
        name = case_name(tls, resume)
        cells, res, fail = [], [], []
        for t in targets:
            rs = [r for r in trials if r['target'] == t and r['case'] == name]
            us = median([r['cpu_us_per_handshake'] for r in rs])
            hs = median([r['handshakes_per_cpu_s'] for r in rs])
            cells.append('%s (%s)' % (us, hs))
            ok = sum(r['ok'] for r in rs)
            res.append('%s %.0f%%' % (t, 100.0 * sum(r['resumed'] for r in rs) / ok if ok else 0))
            fail.append('%s %d' % (t, sum(r['failed'] for r in rs)))
        lines.append('| %s | %s | %s | %s |' % (name, ' | '.join(cells), ', '.join(res),
                                               ', '.join(fail)))
    kam = 'kamailio' in targets
    if kam:
        lines += ['', 'Ratio Kamailio / sipshard (server CPU per handshake, median of per-round '
                  'ratios):', '', '| case | ' + ' | '.join(t for t in targets if t != 'kamailio')
                  + ' |', '|---|' + '---:|' * (len(targets) - 1)]
        for tls, resume in CASES:
            name = case_name(tls, resume)
            row = []
            for t in targets:
                if t == 'kamailio':
                    continue
                ratios = []
                for rnd in range(args.rounds):
                    a = [r for r in trials if r['target'] == t and r['case'] == name
                         and r['round'] == rnd]
                    k = [r for r in trials if r['target'] == 'kamailio' and r['case'] == name
                         and r['round'] == rnd]
                    if a and k and a[0]['cpu_us_per_handshake'] and k[0]['cpu_us_per_handshake']:
                        ratios.append(k[0]['cpu_us_per_handshake'] / a[0]['cpu_us_per_handshake'])
                m = median(ratios)
                row.append('%.2fx' % m if m else '-')
            lines.append('| %s | %s |' % (name, ' | '.join(row)))
    unresumed = sorted({r['target'] for r in trials
                        if r['resume'] and r['ok'] and r['resumed'] < 0.9 * r['ok']})
    if unresumed:
        lines += ['', 'Resumed cases where %s resumed fewer than 90%% of the sessions are full '
                  'handshakes for that target: their ratios compare a full handshake with a '
                  'resumed one.' % ', '.join(unresumed)]
    lines += ['', 'Server CPU covers the whole connection (accept, handshake, the SIP pong, '
              'close) and the server\'s idle work over the run. A TLS 1.3 resumption still '
              'does a key exchange (psk_dhe_ke), so it costs about what a full handshake does.']
    return '\n'.join(lines) + '\n'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--count', type=int, default=3000)
    ap.add_argument('--rate', type=int, default=300)
    ap.add_argument('--targets', default='sipshard-1,sipshard-2,kamailio')
    ap.add_argument('--out', default=os.path.join(lab.RESULTS, '%s-tls-handshakes'
                                                  % datetime.date.today().isoformat()))
    args = ap.parse_args()
    target_dir = os.environ.get('CARGO_TARGET_DIR', os.path.join(REPO, 'target'))
    subprocess.run(['cargo', 'build', '--release', '--quiet', '--bin', 'sipshard', '--example',
                    'tls_handshakes', '--example', 'udp_echo'], cwd=REPO, check=True)
    bins = dict(sipshard=os.path.join(target_dir, 'release', 'sipshard'),
                echo=os.path.join(target_dir, 'release', 'examples', 'udp_echo'),
                client=os.path.join(target_dir, 'release', 'examples', 'tls_handshakes'))
    targets = args.targets.split(',')
    trials = []
    for rnd in range(args.rounds):
        order = targets if rnd % 2 == 0 else list(reversed(targets))
        for t in order:
            trials += run_target(t, args, bins, rnd)
    cmd = 'perf/tls-handshakes.py ' + ' '.join(sys.argv[1:])
    md = report(trials, args, cmd)
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(command=cmd, trials=trials), f, indent=1)
    with open(args.out + '.md', 'w') as f:
        f.write(md)
    print(md)


if __name__ == '__main__':
    main()

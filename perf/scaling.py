#!/usr/bin/env python3
"""Per-core scaling (issue 20): what a second shard costs per operation, with and without the
kernel steering program (`--steering kernel|off`), measured on whole processes (stdlib only).

For each scenario (`register`, `register-digest`, `call`) at a fixed offered rate, three
server variants run in alternating order for --rounds rounds:
  1-shard      sipshard --shards 1
  2-shards     sipshard --shards 2 (kernel steering and consolidation, the defaults: at low
               load both shards run on shard 0's thread)
  2-shards-spread  sipshard --shards 2 --consolidate off (kernel steering, one thread per
               shard always)
  2-shards-off sipshard --shards 2 --steering off --consolidate off (the kernel's hash of the
               source address spreads the datagrams and the shards hand on what they do not
               own)
Each run is a fresh server (`--listen udp:127.0.0.1:PORT --log warn --metrics ...`) driven by
`sipshard load SCENARIO 127.0.0.1:PORT --rate R --duration D --sockets 16 --json --quiet`
(register-digest: 1,000 users in a users file, the generator answers the 401s; call: the
callee is a `sipshard --mode responder` reached through a trunk route for +49, its CPU not
counted). Server CPU = utime+stime of all the server's threads from /proc, end minus start of
the load run, per completed operation (a REGISTER, a digest registration of two REGISTERs,
a call of INVITE/ACK/BYE). From the metrics (scraped outside the CPU window): hand-offs and
cross-shard wake-ups per operation and the in-server latency quantiles (receive timestamp to
send, whole run); from the generator: its client-side latency quantiles.

Reports medians per variant and the ratio to 1-shard (issue 20's bound: 2 shards at most 1.10x
the CPU per operation of 1 shard at the same offered rate). These 2-core VMs are noisy: read
the ratios of the same rounds, not the absolute µs.

Run under `flock /tmp/bench.lock` (re-runs itself under it otherwise). Writes
perf/results/DATE-scaling.{json,md} (--out to change).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, 'lib'))
import lab  # noqa: E402

IP = '127.0.0.1'
LOCK = '/tmp/bench.lock'
CLK_TCK = os.sysconf('SC_CLK_TCK')
VARIANTS = {
    '1-shard': ['--shards', '1'],
    '2-shards': ['--shards', '2'],
    '2-shards-spread': ['--shards', '2', '--consolidate', 'off'],
    '2-shards-off': ['--shards', '2', '--steering', 'off', '--consolidate', 'off'],
}
# Offered rates: perf/compare's fixed moderate rates (perf/lib/lab.py SCENARIOS).
RATES = {'register': 5000, 'register-digest': 3000, 'call': 1000}
# Server messages per operation, for the per-message figures.
AORS = 1000


def scrape(addr, wait_s=10):
    """lab.scrape of `addr`, waiting up to wait_s for a server just started to serve it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return lab.scrape(addr)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def switches(pid):
    """Context switches (voluntary + involuntary) of all the process' threads: one voluntary
    switch per sleep, so about one per wake-up of a shard."""
    n = 0
    try:
        tids = os.listdir('/proc/%d/task' % pid)
    except OSError:
        return 0
    for tid in tids:
        try:
            with open('/proc/%d/task/%s/status' % (pid, tid)) as f:
                for line in f:
                    if line.startswith(('voluntary_ctxt_switches', 'nonvoluntary_ctxt_switches')):
                        n += int(line.split()[1])
        except OSError:
            pass
    return n


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_one(args, tmp, scenario, variant, seq):
    port, mport = lab.free_port(), lab.free_port()
    maddr = '%s:%d' % (IP, mport)
    cmd = [args.bin, '--listen', 'udp:%s:%d' % (IP, port), '--metrics', maddr,
           '--log', 'warn'] + VARIANTS[variant] + args.server_args.split()
    load_extra = []
    responder = None
    if scenario == 'register-digest':
        users = os.path.join(tmp, 'users.txt')
        with open(users, 'w') as f:
            for n in range(AORS):
                f.write('user%04d:pw%04d\n' % (n, n))
        cmd += ['--users', users, '--domain', 'localhost']
        load_extra = ['--domain', 'localhost', '--password', 'pw{n:04}', '--aors', str(AORS)]
    elif scenario == 'call':
        rport = lab.free_port()
        responder = subprocess.Popen(
            [args.bin, '--listen', 'udp:%s:%d' % (IP, rport), '--shards', '1',
             '--mode', 'responder', '--log', 'warn'],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, 'responder.log'), 'w'))
        plan = os.path.join(tmp, 'plan.toml')
        with open(plan, 'w') as f:
            f.write('[[trunk]]\nname = "far"\naddress = "%s:%d"\ncheck_interval_ms = 0\n\n'
                    '[[route]]\nprefix = "+49"\ntrunks = ["far"]\n' % (IP, rport))
        cmd += ['--config', plan]
        load_extra = ['--domain', 'localhost', '--callee', '+4930123456']
    else:
        load_extra = ['--aors', str(AORS)]
    log = os.path.join(tmp, 'server-%s-%s-%d.log' % (scenario, variant, seq))
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, 'w'))
    try:
        m0 = scrape(maddr)
        time.sleep(0.3)
        t0 = lab.proc_ticks(server.pid)
        s0 = switches(server.pid)
        w0 = time.monotonic()
        lcmd = [args.bin, 'load', scenario, '%s:%d' % (IP, port), '--rate',
                str(args.rate or RATES[scenario]), '--duration', str(args.duration),
                '--sockets', '16', '--json', '--quiet'] + load_extra + args.load_args.split()
        out = subprocess.run(lcmd, capture_output=True, text=True)
        t1 = lab.proc_ticks(server.pid)
        s1 = switches(server.pid)
        wall = time.monotonic() - w0
        m1 = scrape(maddr)
        steering = m1.get('sipshard_kernel_steering', 0.0)
    finally:
        stop(server)
        if responder:
            stop(responder)
    try:
        r = json.loads(out.stdout)
    except ValueError:
        raise RuntimeError('%s: no JSON: %s %s' % (' '.join(lcmd), out.stdout[-300:],
                                                   out.stderr[-800:]))
    done = r.get('completed', 0)
    cpu_s = (t1 - t0) / CLK_TCK

    def d(key):
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    lat = r.get('latency', {})
    client = lat.get('register_200') or lat.get('invite_200') or next(iter(lat.values()), {})
    row = dict(
        scenario=scenario, variant=variant, seq=seq, completed=done,
        failed=r.get('failed', 0), retransmissions=r.get('retransmissions', 0),
        cpu_us_per_op=cpu_s * 1e6 / done if done else None,
        cpu_pct=100.0 * cpu_s / wall,
        handoffs_per_op=d('sipshard_handoffs_total') / done if done else None,
        wakeups_per_op=d('sipshard_wakeups_total') / done if done else None,
        switches_per_op=(s1 - s0) / done if done else None,
        steering=steering,
        server_latency_us={q: m1.get('sipshard_latency_us_quantile{quantile="%s"}' % q)
                           for q in ('0.5', '0.99', '0.999')},
        client_latency_us={k: client.get(k) for k in ('p50', 'p99', 'p999')},
        load_cmd=' '.join(lcmd), server_cmd=' '.join(cmd))
    print('  %-16s %-13s #%d: %7.2f µs/op  hand-offs/op %.3f  switches/op %.3f  failed %s  '
          'retrans %s  steering %s' % (scenario, variant, seq, row['cpu_us_per_op'] or -1,
                                       row['handoffs_per_op'] or 0, row['switches_per_op'] or 0,
                                       row['failed'], row['retransmissions'], int(steering)),
          flush=True)
    return row


def med(rows, scenario, variant, key):
    v = [r[key] for r in rows if r['scenario'] == scenario and r['variant'] == variant
         and r[key] is not None]
    return statistics.median(v) if v else None


def med_q(rows, scenario, variant, key, q):
    v = [r[key][q] for r in rows if r['scenario'] == scenario and r['variant'] == variant
         and r[key].get(q) is not None]
    return statistics.median(v) if v else None


def report(args, doc):
    rows = doc['runs']
    out = ['# Per-core scaling: 1 shard vs 2 shards with and without kernel steering', '',
           'Date: %s. Machine: %s, %d CPUs, kernel %s, guest halt polling %s. Command: `%s`.' % (
               doc['date'], platform.machine(), os.cpu_count(), platform.release(),
               'none' if doc.get('halt_poll_ns') is None else '%d ns' % doc['halt_poll_ns'],
               doc['command']), '',
           'Server CPU per completed operation (medians of %d rounds, variants alternating), '
           'the ratio to 1 shard in the same rounds, hand-offs and cross-shard wake-ups per '
           'operation, the server threads\' context switches per operation (about one per '
           'shard wake-up), the server\'s in-server latency (receive timestamp to send) and the '
           'generator\'s client-side latency, p50/p99 in µs. Failed and retransmitted '
           'operations are summed over the rounds.' % args.rounds, '',
           '| scenario | rate/s | variant | µs/op | /1-shard | hand-offs/op | wake-ups/op | '
           'switches/op | server p50/p99 µs | client p50/p99 µs | failed | retrans |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for sc in doc['scenarios']:
        base = med(rows, sc, '1-shard', 'cpu_us_per_op')
        for v in VARIANTS:
            c = med(rows, sc, v, 'cpu_us_per_op')
            if c is None:
                continue
            sel = [r for r in rows if r['scenario'] == sc and r['variant'] == v]
            out.append('| %s | %d | %s | %.2f | %s | %.3f | %.3f | %.3f | %s/%s | %s/%s | %d | %d |' % (
                sc, args.rate or RATES[sc], v, c,
                '%.2fx' % (c / base) if base else '-',
                med(rows, sc, v, 'handoffs_per_op') or 0.0,
                med(rows, sc, v, 'wakeups_per_op') or 0.0,
                med(rows, sc, v, 'switches_per_op') or 0.0,
                fmt(med_q(rows, sc, v, 'server_latency_us', '0.5')),
                fmt(med_q(rows, sc, v, 'server_latency_us', '0.99')),
                fmt(med_q(rows, sc, v, 'client_latency_us', 'p50')),
                fmt(med_q(rows, sc, v, 'client_latency_us', 'p99')),
                sum(r['failed'] for r in sel), sum(r['retransmissions'] for r in sel)))
    out += ['', 'Each run: `%s` against a fresh `%s` (plus the variant\'s flags).' % (
        rows[0]['load_cmd'].split(' 127.0.0.1')[0] + ' ...', 'sipshard --listen ...'), '']
    return '\n'.join(out) + '\n'


def fmt(v):
    return '-' if v is None else '%.0f' % v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bin', default=os.path.join(REPO, 'target', 'release', 'sipshard'))
    ap.add_argument('--scenarios', default='register,register-digest,call')
    ap.add_argument('--variants', default=','.join(VARIANTS))
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--server-args', default='', help='extra sipshard flags for every '
                    'variant (e.g. "--io uring")')
    ap.add_argument('--load-args', default='', help='extra `sipshard load` flags (e.g. '
                    '"--tick-us 100": the generator sends every 100 µs instead of every ms, '
                    'smaller bursts)')
    ap.add_argument('--duration', type=int, default=10)
    ap.add_argument('--rate', type=int, help='offered rate for every scenario (default: '
                    'register 5000, register-digest 3000, call 1000)')
    ap.add_argument('--out', help='results path without extension (default '
                    'perf/results/DATE-scaling)')
    ap.add_argument('--halt-poll-ns', type=int, help='on a VM guest with cpuidle-haltpoll: '
                    'how long an idle vCPU polls before it halts, for the run (restored '
                    'after); default: as the machine is set')
    args = ap.parse_args()
    if os.environ.get('SIPSHARD_BENCH_LOCKED') != '1':
        env = dict(os.environ, SIPSHARD_BENCH_LOCKED='1')
        os.execvpe('flock', ['flock', LOCK, sys.executable] + sys.argv, env)
    scenarios = args.scenarios.split(',')
    variants = args.variants.split(',')
    date = datetime.date.today().isoformat()
    doc = dict(date=date, command='perf/scaling.py ' + ' '.join(sys.argv[1:]),
               scenarios=scenarios, runs=[])
    with tempfile.TemporaryDirectory() as tmp, lab.halt_poll(args.halt_poll_ns) as hp:
        doc['halt_poll_ns'] = hp.value
        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else list(reversed(variants))
            for sc in scenarios:
                for v in order:
                    doc['runs'].append(run_one(args, tmp, sc, v, rnd))
    out = args.out or os.path.join(HERE, 'results', '%s-scaling' % date)
    with open(out + '.json', 'w') as f:
        json.dump(doc, f, indent=1)
    text = report(args, doc)
    with open(out + '.md', 'w') as f:
        f.write(text)
    print(text)


if __name__ == '__main__':
    main()

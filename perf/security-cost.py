#!/usr/bin/env python3
"""What edge security costs (issue 17), measured on whole processes (stdlib only).

1. `register` and `call`: server CPU per operation with `[security]` at its defaults plus an
   allow and a deny list (flood counting, scanner check and lockout on every request), against
   the same build with `[security] enabled = false`. `sipshard load` drives one shard at a
   fixed rate (REGISTER --reg-rate/s; calls --call-rate/s through a trunk route to a
   `sipshard --mode responder`). Rounds alternate the order; medians and the on/off ratio.
2. `banned`: a flood from a banned source. sipshard (one shard, `exempt = []`, a flood limit
   the generator passes at once) and Kamailio with pike (perf/kamailio/pike.cfg, one worker)
   get OPTIONS at --flood-rate/s from `sipshard load options` (127.0.0.1) for --duration s:
   server CPU per datagram offered and whether it kept up (kernel UDP receive-buffer drops
   during the run).

3. `--topology`: only calls, with `[security]` as in 1. against the same plus
   `topology_hiding = true` (every request and response of the call rewritten both ways);
   writes DATE-topology-cost.{json,md} instead.
4. `--cdr`: only calls, with `[security]` as in 1., without and with call detail records
   (`--cdr jsonl:` in a scratch directory: the record built in the shard, the writer thread
   and the file writes all count, the server process's CPU being all its threads'); writes
   DATE-cdr-cost.{json,md}.

Run under `flock /tmp/bench.lock`. Writes perf/results/DATE-security-cost.{json,md}.
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, 'lib'))
import lab  # noqa: E402  (proc_ticks, descendants, udp_rcvbuf_errors)

IP = '127.0.0.1'


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((IP, 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(cmd, log):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, 'w'))
    time.sleep(0.6)
    if p.poll() is not None:
        raise RuntimeError('%s exited: %s' % (cmd[0], open(log).read()[-2000:]))
    return p


def stop(p):
    p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def ticks(pids):
    return sum(lab.proc_ticks(p) for p in pids)


def load(binary, scenario, target, rate, duration, extra=()):
    out = subprocess.run([binary, 'load', scenario, target, '--rate', str(rate), '--duration',
                          str(duration), '--json', '--quiet', '--sockets', '16'] + list(extra),
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def security_toml(tmp, on, hiding=False):
    path = os.path.join(tmp, 'security-%s%s.toml' % ('on' if on else 'off',
                                                     '-hiding' if hiding else ''))
    with open(path, 'w') as f:
        if on:
            f.write('[security]\nallow = ["127.0.0.0/8", "10.0.0.0/8"]\n'
                    'deny = ["192.0.2.0/24", "198.51.100.0/24"]\n')
            if hiding:
                f.write('topology_hiding = true\n')
        else:
            f.write('[security]\nenabled = false\n')
    return path


def cost_run(args, tmp, scenario, on, hiding=False, cdr=False):
    """Server CPU µs per completed operation, one run."""
    port = free_port()
    server_extra = []
    records = None
    if cdr:
        records = os.path.join(tmp, 'cdr-%d.jsonl' % port)
        server_extra = ['--cdr', 'jsonl:' + records]
    cfg = security_toml(tmp, on, hiding)
    extra, responder = [], None
    if scenario == 'call':
        rport = free_port()
        responder = start([args.binary, '--mode', 'responder', '--shards', '1', '--listen',
                           'udp:%s:%d' % (IP, rport), '--log', 'warn'],
                          os.path.join(tmp, 'responder.log'))
        with open(cfg, 'a') as f:
            f.write('\n[[trunk]]\nname = "far"\naddress = "%s:%d"\ncheck_interval_ms = 0\n\n'
                    '[[route]]\nprefix = "+49"\ntrunks = ["far"]\n' % (IP, rport))
        extra = ['--domain', 'localhost', '--callee', '+4930123456']
    server = start([args.binary, '--shards', '1', '--listen', 'udp:%s:%d' % (IP, port),
                    '--log', 'warn', '--config', cfg] + server_extra,
                   os.path.join(tmp, 'server.log'))
    try:
        rate = args.reg_rate if scenario == 'register' else args.call_rate
        t0 = lab.proc_ticks(server.pid)
        w0 = lab.thread_ticks(server.pid, 'cdr-writer')
        r = load(args.binary, scenario, '%s:%d' % (IP, port), rate, args.duration, extra)
        t1 = lab.proc_ticks(server.pid)
        w1 = lab.thread_ticks(server.pid, 'cdr-writer')
    finally:
        stop(server)
        if responder:
            stop(responder)
    done = r['completed']
    us = (t1 - t0) / os.sysconf('SC_CLK_TCK') * 1e6 / max(done, 1)
    written = None
    if records:
        with open(records) as f:
            written = sum(1 for _ in f)
    writer_us = (w1 - w0) / os.sysconf('SC_CLK_TCK') * 1e6 / max(done, 1)
    return {'security': 'on' if on else 'off', 'hiding': hiding, 'cdr': cdr,
            'records': written, 'writer_us_per_op': round(writer_us, 2), 'scenario': scenario,
            'rate': rate,
            'completed': done, 'failed': r['failed'],
            'retransmissions': r['retransmissions'], 'cpu_us_per_op': round(us, 2)}


def flood_run(args, tmp, target_kind):
    port = free_port()
    if target_kind == 'sipshard':
        cfg = os.path.join(tmp, 'ban.toml')
        with open(cfg, 'w') as f:
            f.write('[security]\nexempt = []\nflood_requests = 30\nflood_window_ms = 2000\n')
        p = start([args.binary, '--shards', '1', '--listen', 'udp:%s:%d' % (IP, port), '--log',
                   'warn', '--config', cfg], os.path.join(tmp, 'ban.log'))
        pids = lambda: [p.pid]  # noqa: E731
    else:
        p = start(['kamailio', '-f', os.path.join(HERE, 'kamailio', 'pike.cfg'), '-DD', '-E',
                   '-m', '256', '-M', '8', '-n', '1', '-A', 'LISTEN=udp:%s:%d' % (IP, port),
                   '-A', 'UDP_MAXBUFFER=4194304'], os.path.join(tmp, 'kamailio.log'))
        pids = lambda: lab.descendants(p.pid)  # noqa: E731
    try:
        # Get banned first (a burst well over 30 requests in 2 s), then the measured flood.
        load(args.binary, 'options', '%s:%d' % (IP, port), 1000, 1, ['--timeout-ms', '200'])
        drops0 = lab.udp_rcvbuf_errors()
        t0 = ticks(pids())
        r = load(args.binary, 'options', '%s:%d' % (IP, port), args.flood_rate, args.duration,
                 ['--timeout-ms', '200'])
        t1 = ticks(pids())
        drops = lab.udp_rcvbuf_errors() - drops0
    finally:
        stop(p)
    sent = r['started'] + r['retransmissions']
    us = (t1 - t0) / os.sysconf('SC_CLK_TCK') * 1e6 / max(sent, 1)
    return {'server': target_kind, 'offered_per_s': args.flood_rate, 'datagrams': sent,
            'answered': r['completed'], 'kernel_drops': drops,
            'cpu_us_per_datagram': round(us, 3),
            'cpu_share_of_a_core': round((t1 - t0) / os.sysconf('SC_CLK_TCK') / args.duration, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--binary', default=os.path.join(HERE, '..', 'target', 'release',
                                                      'sipshard'))
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--duration', type=int, default=10)
    ap.add_argument('--reg-rate', type=int, default=20000)
    ap.add_argument('--call-rate', type=int, default=2000)
    ap.add_argument('--flood-rate', type=int, default=100000)
    ap.add_argument('--topology', action='store_true',
                    help='only calls, without and with topology hiding')
    ap.add_argument('--cdr', action='store_true',
                    help='only calls, without and with call detail records')
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix='sipshard-security-cost-')
    if args.topology:
        return topology(args, tmp)
    if args.cdr:
        return cdr_cost(args, tmp)
    cost = []
    for rnd in range(args.rounds):
        for scenario in ('register', 'call'):
            order = (True, False) if rnd % 2 == 0 else (False, True)
            for on in order:
                r = cost_run(args, tmp, scenario, on)
                lab.log('%s security %s: %.2f us/op (%d done, %d failed, %d retrans)' % (
                    scenario, r['security'], r['cpu_us_per_op'], r['completed'], r['failed'],
                    r['retransmissions']))
                cost.append(r)
    flood = []
    for rnd in range(args.rounds):
        for kind in (('sipshard', 'kamailio') if rnd % 2 == 0 else ('kamailio', 'sipshard')):
            r = flood_run(args, tmp, kind)
            lab.log('banned flood %s: %.3f us/datagram, %.0f%% of a core, %d kernel drops' % (
                kind, r['cpu_us_per_datagram'], r['cpu_share_of_a_core'] * 100,
                r['kernel_drops']))
            flood.append(r)

    def med(rows, key, **match):
        v = [r[key] for r in rows if all(r[k] == m for k, m in match.items())]
        return statistics.median(v) if v else None

    lines = ['# Edge security cost (%s)' % datetime.date.today(), '',
             'Command: `flock /tmp/bench.lock perf/security-cost.py --rounds %d --duration %d '
             '--reg-rate %d --call-rate %d --flood-rate %d`' % (
                 args.rounds, args.duration, args.reg_rate, args.call_rate, args.flood_rate),
             '', '## Security on against off (1 shard, medians of %d runs)' % args.rounds, '',
             '| scenario | rate/s | off µs/op | on µs/op | on/off |', '|---|---|---|---|---|']
    for scenario, rate in (('register', args.reg_rate), ('call', args.call_rate)):
        off = med(cost, 'cpu_us_per_op', scenario=scenario, security='off')
        on = med(cost, 'cpu_us_per_op', scenario=scenario, security='on')
        lines.append('| %s | %d | %.2f | %.2f | %.3f |' % (scenario, rate, off, on, on / off))
    lines += ['', '## A banned source flooding OPTIONS at %d/s (one shard / one Kamailio '
              'worker, medians)' % args.flood_rate, '',
              '| server | µs CPU per datagram | share of a core | kernel drops |',
              '|---|---|---|---|']
    for kind in ('sipshard', 'kamailio'):
        lines.append('| %s | %.3f | %.2f | %d |' % (
            kind, med(flood, 'cpu_us_per_datagram', server=kind),
            med(flood, 'cpu_share_of_a_core', server=kind),
            med(flood, 'kernel_drops', server=kind)))
    report = '\n'.join(lines) + '\n'
    print(report)
    out = os.path.join(HERE, 'results', '%s-security-cost' % datetime.date.today())
    with open(out + '.md', 'w') as f:
        f.write(report)
    with open(out + '.json', 'w') as f:
        json.dump({'args': vars(args), 'cost': cost, 'flood': flood}, f, indent=1)


def save(args, name, lines, runs):
    """Prints the report and writes it to perf/results/DATE-NAME.{md,json}."""
    report = '\n'.join(lines) + '\n'
    print(report)
    out = os.path.join(HERE, 'results', '%s-%s' % (datetime.date.today(), name))
    with open(out + '.md', 'w') as f:
        f.write(report)
    with open(out + '.json', 'w') as f:
        json.dump({'args': vars(args), 'runs': runs}, f, indent=1)


def alternate(args, tmp, key):
    """Call runs without and with the option `key` (a cost_run keyword), the order
    alternating by round; returns the runs and the median µs/call of each side."""
    runs = []
    for rnd in range(args.rounds):
        for on in ((False, True) if rnd % 2 == 0 else (True, False)):
            r = cost_run(args, tmp, 'call', True, **{key: on})
            lab.log('call, %s %s: %.2f us/op (%d done, %d failed, %d retrans, %s records)' % (
                key, on, r['cpu_us_per_op'], r['completed'], r['failed'],
                r['retransmissions'], r['records']))
            runs.append(r)
    med = {on: statistics.median([r['cpu_us_per_op'] for r in runs if r[key] == on])
           for on in (False, True)}
    return runs, med


def topology(args, tmp):
    runs, med = alternate(args, tmp, 'hiding')
    bad = sum(r['failed'] + r['retransmissions'] for r in runs)
    lines = ['# Topology hiding cost (%s)' % datetime.date.today(), '',
             'Command: `flock /tmp/bench.lock perf/security-cost.py --topology --rounds %d '
             '--duration %d --call-rate %d`' % (args.rounds, args.duration, args.call_rate), '',
             'Calls (INVITE/100/180/200/ACK/BYE/200) from `sipshard load` through one proxy '
             'shard to a trunk (`sipshard --mode responder`); `[security]` at its defaults '
             'plus an ACL in both; medians of %d runs; %d failed calls or retransmissions in '
             'all runs.' % (args.rounds, bad), '',
             '| rate/s | without µs/call | with µs/call | with/without |', '|---|---|---|---|',
             '| %d | %.2f | %.2f | %.3f |' % (args.call_rate, med[False], med[True],
                                              med[True] / med[False])]
    save(args, 'topology-cost', lines, runs)


def cdr_cost(args, tmp):
    runs, med = alternate(args, tmp, 'cdr')
    bad = sum(r['failed'] + r['retransmissions'] for r in runs)
    missing = sum(r['completed'] - r['records'] for r in runs if r['cdr'])
    writer = statistics.median([r['writer_us_per_op'] for r in runs if r['cdr']])
    lines = ['# Call detail records cost (%s)' % datetime.date.today(), '',
             'Command: `flock /tmp/bench.lock perf/security-cost.py --cdr --rounds %d '
             '--duration %d --call-rate %d`' % (args.rounds, args.duration, args.call_rate), '',
             'Calls (INVITE/100/180/200/ACK/BYE/200) from `sipshard load` through one proxy '
             'shard to a trunk (`sipshard --mode responder`); with records: `--cdr jsonl:FILE` '
             '(the server\'s CPU is all its threads\': shard and CDR writer); medians of %d '
             'runs; %d failed calls or retransmissions in all runs; %d completed calls without '
             'a record (records also cover calls the load generator counted as failed).'
             % (args.rounds, bad, missing), '',
             '| rate/s | without µs/call | with µs/call | with/without | of which the CDR writer thread |',
             '|---|---|---|---|---|',
             '| %d | %.2f | %.2f | %.3f | %.2f µs (%.1f%% of without) |' % (
                 args.call_rate, med[False], med[True], med[True] / med[False], writer,
                 100 * writer / med[False])]
    save(args, 'cdr-cost', lines, runs)


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""Tables, plots and the summary of perf/compare runs (Python 3 standard library only).

usage: report.py [--readme] RESULT.json...

Writes RESULT.md next to each JSON file, the SVG plots <date>[-u1][-quick]-cpu.svg (server CPU µs
per operation by target and scenario, bar chart) and <date>[-u1][-quick]-latency.svg (sipshard's
in-server latency percentiles vs offered rate) from the newest result of each scenario in
perf/results, prints a short summary, and with --readme puts the tables and plots into the
"## Performance" section of README.md (between the perf-results markers).
"""
import glob
import json
import math
import os
import re
import sys

PERF = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PERF)
RESULTS = os.environ.get('PERF_RESULTS') or os.path.join(PERF, 'results')
ORDER = ['sipshard-1', 'sipshard-2', 'kamailio', 'echo']
LABEL = {'sipshard-1': 'sipshard --shards 1', 'sipshard-2': 'sipshard --shards 2',
         'kamailio': 'Kamailio (-n 2)', 'echo': 'UDP echo (kernel floor)'}
COLOR = {'sipshard-1': '#4e79a7', 'sipshard-2': '#2c5282', 'kamailio': '#e15759',
         'echo': '#9c9c9c'}
# issue #14's bar: Kamailio's server CPU per op over sipshard's, both measured in the same run
# (absolute figures move with the shared VM; ratios of one run do not divide figures taken at
# different times or rates)
MIN_VS_KAM = {'reg': 5.0, 'reg-auth': 4.0, 'calls': 4.0, 'trunk-calls': 4.0}
# issue 15: a call through a trunk route costs at most this much sipshard CPU per call over a
# call to a registered user (trunk-calls over calls, same run, fixed rate)
MAX_TRUNK_VS_USER = 1.10
SCENARIO_ORDER = ('reg', 'reg-auth', 'calls', 'trunk-calls')
TRANSPORT_NOTE = {
    'un': 'one socket per call, so SO_REUSEPORT spreads calls over the shards',
    'u1': 'one socket for all calls, as in the Kamailio baseline: SO_REUSEPORT puts the whole '
          'load on one shard, and with 2 shards about half of it is handed to the other',
}
MAX_VS_ECHO = 3.0


def f1(v, nd=1):
    return '–' if v is None else ('%.*f' % (nd, v))


def by_target(doc):
    return {s['target']: s for s in doc['searches']}


def lat(r):
    if not r or 'sipshard' not in r:
        return '–'
    q = r['sipshard']['latency_us']
    return '/'.join(str(q.get(k, '–')) for k in ('0.5', '0.9', '0.99', '0.999'))


def cpu_fixed(s):
    r = s.get('fixed') if s else None
    return r.get('cpu_us_per_op') if r and r.get('pass') else None


def cpu_best(s):
    """CPU µs/op in the passing trial at the highest rate (how the Kamailio baseline was taken)."""
    r = s.get('best') if s else None
    return r.get('cpu_us_per_op') if r and r.get('pass') else None


def goal_lines(doc):
    """Same-run ratios against Kamailio, one line per sipshard shard count and rate, and what a
    hand-off between shards costs (the 2-shard run against the 1-shard one, same run)."""
    sc = doc['scenario']
    t = by_target(doc)
    if sc not in MIN_VS_KAM:
        return []
    goal = MIN_VS_KAM[sc]
    out = []
    for where, cpu in (('at the fixed rate', cpu_fixed),
                       ('at each target\'s highest passing rate', cpu_best)):
        k = cpu(t.get('kamailio'))
        for name in ('sipshard-1', 'sipshard-2'):
            v = cpu(t.get(name))
            if v is None or not k:
                out.append('- %s, %s: no passing trial of %s, ratio not evaluated' % (
                    LABEL[name], where, 'sipshard' if v is None else 'Kamailio'))
                continue
            ok = k / v >= goal
            out.append('- %s, %s: %.1f µs/op, Kamailio %.1f µs/op in the same run: %.1fx less '
                       'CPU (%s %.0fx) → **%s**' % (LABEL[name], where, v, k, k / v,
                                                    '≥' if ok else '<', goal,
                                                    'met' if ok else 'NOT met'))
    s1, s2 = t.get('sipshard-1'), t.get('sipshard-2')
    r2 = s2.get('fixed') if s2 else None
    if r2 and r2.get('pass') and 'sipshard' in r2 and cpu_fixed(s1):
        ops = r2['sipp']['ok']
        hops = r2['sipshard']['handoffs'] / ops if ops else 0
        extra = cpu_fixed(s2) - cpu_fixed(s1)
        line = ('- Hand-offs with 2 shards at the fixed rate: %.2f per op (%.0f%% of datagrams); '
                '2 shards cost %+.1f µs/op against 1 shard in this run' % (
                    hops, 100 * (r2['sipshard']['handoff_share'] or 0), extra))
        if hops > 0.05:
            line += (', at most %.1f µs per hand-off if all of it were hand-offs (it also '
                     'holds the second thread\'s own wake-ups and idle polls)' % (extra / hops))
        out.append(line + '.')
    return out


def trunk_lines(doc):
    """trunk-calls: what reached the gateway, and (issue 15) the trunk call against the call to a
    registered user of the same run."""
    out = []
    fwd = doc.get('forwarded_invite') or {}
    if fwd:
        out += ['What reached the gateway (one probe INVITE per target before its trials; the full '
                'message is in the run directory, `forwarded-invite.txt`):', '',
                '| target | request line | To | Record-Route |', '|---|---|---|---|']
        for name in ORDER:
            f = fwd.get(name)
            if f is None:
                continue
            if 'error' in f:
                out.append('| %s | probe failed: %s | | |' % (LABEL[name], f['error']))
                continue
            out.append('| %s | `%s` | `%s` | `%s` |' % (LABEL[name], f['request_line'], f['to'],
                                                        ', '.join(f['record_route'])))
        out.append('')
    base = doc.get('calls_same_run')
    if not base:
        return out
    tc, tb = by_target(doc), by_target(base)
    out += ['Trunk route against a registered user, same run (issue 15: a trunk call costs at most '
            '%d%% more sipshard CPU than a call to a registered user):' % round(
                100 * (MAX_TRUNK_VS_USER - 1)), '',
            '| target | calls CPU µs/call @ %s/s | trunk-calls CPU µs/call @ %s/s | trunk/user | '
            'calls max /s | trunk-calls max /s |' % ('{:,}'.format(base['fixed_rate']),
                                                   '{:,}'.format(doc['fixed_rate'])),
            '|---|---:|---:|---:|---:|---:|']
    verdicts = []
    for name in ORDER:
        a, b = tb.get(name), tc.get(name)
        if not a or not b or a.get('note') or b.get('note'):
            continue
        u, t = cpu_fixed(a), cpu_fixed(b)
        ratio = t / u if u and t else None
        out.append('| %s | %s | %s | %s | %s | %s |' % (
            LABEL[name], f1(u), f1(t), f1(ratio, 2),
            '{:,}'.format(a['max_rate']) if a.get('max_rate') else 'none',
            '{:,}'.format(b['max_rate']) if b.get('max_rate') else 'none'))
        if name.startswith('sipshard'):
            if ratio is None:
                verdicts.append('- %s: no passing fixed-rate trial in both scenarios, not '
                                'evaluated' % LABEL[name])
            else:
                ok = ratio <= MAX_TRUNK_VS_USER
                verdicts.append('- %s: trunk/user %.2f (%s %.2f) → **%s**' % (
                    LABEL[name], ratio, '≤' if ok else '>', MAX_TRUNK_VS_USER,
                    'met' if ok else 'NOT met'))
    out += [''] + verdicts + ['', 'One trial each at the fixed rate: on this shared 2-vCPU machine '
                              'a single pair of 20 s trials moves by several per cent; repeated '
                              'alternating trials (`lab.py --rate N --repeat K`) give a firmer '
                              'ratio.', '']
    return out


def others_avg(doc):
    v = [r['others_cpu_pct'] for r in doc['trials'] if 'others_cpu_pct' in r]
    return sum(v) / len(v) if v else None


def share_table(doc):
    """In-server latency of sipshard at 50% and 90% of its highest passing rate."""
    rows = []
    for name in ('sipshard-1', 'sipshard-2'):
        srch = by_target(doc).get(name) or {}
        for pct in ('50', '90'):
            r = (srch.get('at_share') or {}).get(pct)
            if not r:
                continue
            rows.append('| %s | %s%% | %s | %s | %s | %s | %s |' % (
                LABEL[name], pct, '{:,}'.format(r['rate']), 'yes' if r.get('pass') else 'no',
                f1(r.get('cpu_us_per_op')), lat(r), stages(r)))
    if not rows:
        return []
    return ['', 'In-server latency (receive to send, µs, hdrhistogram) at 50% and 90% of the '
            'highest passing rate, and where it goes (p50/p99 of each stage: the socket wait '
            'from the kernel\'s receive timestamp, the core\'s handling of one message, the '
            'hand-off queue, the send call):', '',
            '| target | share of max | rate /s | pass | CPU µs/op | p50/p90/p99/p99.9 µs '
            '| socket wait · core · hand-off queue · send, p50/p99 µs |',
            '|---|---:|---:|---|---:|---|---|'] + rows


def stages(r):
    """The stage quantiles of a trial (results before the stage histograms have none)."""
    st = (r.get('sipshard') or {}).get('stages_us') or {}
    if not st:
        return '-'
    return ' · '.join('%s/%s' % (st.get(s, {}).get('0.5', '-'), st.get(s, {}).get('0.99', '-'))
                      for s in ('socket_wait', 'core', 'handoff_queue', 'send'))


def summary_table(doc):
    t = by_target(doc)
    rows = ['| target | max rate /s (0 failed, 0 retrans) | CPU µs/op @ %s/s | CPU µs/op @ max '
            '| server CPU @ max | SIPp CPU @ max | peak RSS MiB @ max | UDP drops @ max '
            '| in-server latency p50/p90/p99/p99.9 µs @ max | cross-shard share |' % (
                '{:,}'.format(doc['fixed_rate'])),
            '|---|---:|---:|---:|---:|---:|---:|---:|---|---:|']
    for name in ORDER:
        s = t.get(name)
        if not s:
            continue
        if s.get('note'):
            rows.append('| %s | %s |  |  |  |  |  |  |  |  |' % (LABEL[name], s['note']))
            continue
        b = s.get('best')
        fx = s.get('fixed')
        fixed_txt = f1(cpu_fixed(s)) if fx and fx.get('pass') else (
            'failed (%s)' % f1(fx.get('cpu_us_per_op')) if fx and fx.get('cpu_us_per_op') else 'failed')
        if not b:
            rows.append('| %s | none (%s/s failed) | %s |  |  |  |  |  |  |  |' % (
                LABEL[name], '{:,}'.format(doc['fixed_rate']), fixed_txt))
            continue
        hop = b.get('sipshard', {}).get('handoff_share')
        spread = b.get('sipshard', {}).get('datagrams_rx_per_shard')
        hop_txt = '–' if hop is None else '%.0f%%' % (100 * hop)
        if spread and len(spread) > 1 and sum(spread):
            hop_txt += ' (shard 0 got %.0f%%)' % (100.0 * spread[0] / sum(spread))
        rows.append('| %s | %s | %s | %s | %d%% | %d%% | %.1f | %d | %s | %s |' % (
            LABEL[name], '{:,}'.format(b['rate']) + (' (passed once, confirmation failed)'
                                                     if b.get('unconfirmed') else ''),
            fixed_txt, f1(b['cpu_us_per_op']),
            b['server_cpu_pct'], b['sipp_cpu_pct'], b['rss_kib'] / 1024.0,
            b['udp_rcvbuf_errors'], lat(b), hop_txt))
    return rows


def trials_table(doc):
    rows = ['| target | rate /s | pass | successful | failed | retrans | CPU µs/op | server CPU '
            '| SIPp CPU | others\' CPU | drops | RSS MiB | latency p50/p90/p99/p99.9 µs | notes |',
            '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|']
    for r in doc['trials']:
        if 'error' in r:
            rows.append('| %s | %s | ERROR |  |  |  |  |  |  |  |  |  |  | %s |' % (
                r['target'], '{:,}'.format(r['rate']), r['error'].replace('\n', ' ')[:200]))
            continue
        s = r['sipp']
        notes = '; '.join(r['problems'] + ['**%s**' % m for m in r['counter_mismatch']])
        rows.append('| %s | %s | %s | %d | %d | %d | %s | %d%% | %d%% | %s%% | %d | %.1f | %s | %s |' % (
            r['target'], '{:,}'.format(r['rate']), 'yes' if r['pass'] else 'no', s['ok'],
            s['failed'], s['retrans'], f1(r['cpu_us_per_op']), r['server_cpu_pct'],
            r['sipp_cpu_pct'], r.get('others_cpu_pct', '?'), r['udp_rcvbuf_errors'], r['rss_kib'] / 1024.0, lat(r), notes))
    return rows


def machine_lines(doc):
    m = doc['machine']
    sysctl = ', '.join('%s=%s (was %s)' % (k, v, doc['sysctl_previous'].get(k))
                       for k, v in doc['sysctl_applied'].items()) or 'none (not root, or PERF_NO_SYSCTL)'
    return [
        '- Machine: %s, %d cores, Linux %s; load average at the end %s (shared machine)' % (
            m['cpu'], m['cores'], m['kernel'], ' '.join(m['host_load'])),
        '- SIPp %s; Kamailio %s; %s' % (m['sipp'], m['kamailio'], m['rustc']),
        '- Command: `%s`%s' % (doc['command'], ' (quick: 5 s trials, coarse search, no confirmation)'
                                              if doc['quick'] else ''),
    ] + ([
        '- PERF_GENERATOR=sipshard: the caller is `sipshard load` (8 source ports), not SIPp, and '
        'the callee of the call scenarios a `sipshard --mode responder`; below, "SIPp" stands for '
        'that caller (the echo target is still driven by SIPp).'
    ] if doc.get('generator') == 'sipshard' else []) + [
        '- Trials: %d s of load each, fresh server per trial, SIPp `-t %s` (%s), all on '
        '127.0.0.1; rate search: '
        'doubling from %s/s, bisection to %d%%%s. A trial passes with successful == -m, 0 failed, '
        '0 retransmissions, 0 unexpected messages and ≥ 95%% of the rate achieved; for sipshard '
        'its counters must also equal what SIPp saw (REGISTER/200/401/bindings; for calls every '
        'request by method, response by status and datagram in and out).' % (
            doc['duration'], doc['transport'], TRANSPORT_NOTE.get(doc['transport'], ''),
            '{:,}'.format(doc['fixed_rate']), doc['tol_pct'],
            '' if doc['quick'] else ', then the best rate confirmed once'),
        '- Server CPU = utime+stime of all the server\'s threads (sipshard, echo) or all its '
        'processes (Kamailio: main + children) from /proc over the SIPp run, divided by completed '
        'operations. Peak RSS = VmHWM (summed over Kamailio\'s processes, which counts its shared '
        'memory once per process). Drops = UdpRcvbufErrors delta (all sockets, SIPp\'s included).',
        '- Kamailio: `-n %s -m %s -M 8`%s; configs in perf/kamailio/.%s' % (
            doc.get('kam_children', 2), doc.get('kam_shm_mb', 1024),
            ', `-A UDP_MAXBUFFER=%s` (the same receive-buffer ceiling as sipshard\'s 8 MiB '
            'sockets)' % doc['kam_maxbuffer'] if doc.get('kam_maxbuffer') else ' (default 256 KiB buffer probe)',
            ' sipshard ran as user %s.' % doc['run_as'] if doc.get('run_as') else ''),
        '- "others\' CPU" in the trials = busy time of everything else on the machine during the '
        'trial (other people\'s builds on this shared box) in % of one core, from /proc/stat.',
        '- sysctl set during each trial (tuning/sysctl.conf; previous values restored after each '
        'trial): %s' % sysctl,
    ]


def write_md(path, doc):
    day = doc['date']
    lines = ['# %s — %s%s' % (doc['title'], day, ' (quick)' if doc['quick'] else ''), '']
    lines += machine_lines(doc)
    o = others_avg(doc)
    if o is not None:
        lines += ['- Other processes took on average %.0f%% of one core (of 200%%) during the trials: '
                  'absolute µs are inflated for every target on a busy machine; compare within '
                  'this run.' % o]
    lines += ['']
    lines += ['## Summary', ''] + summary_table(doc) + share_table(doc) + ['']
    g = goal_lines(doc)
    if g:
        lines += ['Targets (issue #6/#4), CPU µs/op at the fixed rate:', ''] + g + ['']
    lines += trunk_lines(doc)
    if doc['scenario'] in ('reg', 'reg-auth'):
        lines += ['The UDP echo row is the same SIPp load against examples/udp_echo.rs with '
                  '~500-byte datagrams and as many round trips per call as the scenario has '
                  'transactions, so its CPU per op is the kernel\'s floor for that operation.', '']
    lines += ['## All trials', ''] + trials_table(doc) + ['']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


# ---- SVG -------------------------------------------------------------------------------------
def esc(s):
    return str(s).replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def svg_cpu(docs, path):
    groups = [d for d in docs if d['scenario'] in SCENARIO_ORDER]
    bw, gap, left, top, h = 34, 40, 70, 50, 300
    n = sum(1 + len([t for t in ORDER if cpu_fixed(by_target(d).get(t)) is not None])
            for d in groups)
    width = max(left + n * bw + len(groups) * gap + 40, left + 150 * len(ORDER) + 20)
    vals = [cpu_fixed(by_target(d).get(t)) for d in groups for t in ORDER]
    vmax = max([v for v in vals if v] + [1])
    ymax = 10 ** math.ceil(math.log10(vmax))
    for m in (0.2, 0.25, 0.5):
        if vmax <= ymax * m:
            ymax *= m
            break
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
         'font-size="11">' % (width, top + h + 90),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="20" font-size="14">Server CPU per operation (µs, at the fixed rate; '
         'lower is better)</text>' % left]
    for i in range(6):
        v = ymax * i / 5
        y = top + h - h * v / ymax
        o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (left, width - 20, y, y))
        o.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (left - 6, y + 4, v))
    x = left + 10
    for d in groups:
        t = by_target(d)
        x0 = x
        for name in ORDER:
            v = cpu_fixed(t.get(name))
            if v is None:
                continue
            bh = h * v / ymax
            o.append('<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s: %.2f µs</title></rect>'
                     % (x, top + h - bh, bw - 4, bh, COLOR[name], esc(LABEL[name]), v))
            o.append('<text x="%d" y="%.1f" text-anchor="middle">%s</text>' % (
                x + (bw - 4) / 2, top + h - bh - 4, f1(v)))
            x += bw
        note = ''
        o.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="12">%s%s @ %s/s</text>' % (
            (x0 + x) / 2, top + h + 18, esc(d['scenario']), note, '{:,}'.format(d['fixed_rate'])))
        x += gap
    o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black"/>' % (left, width - 20, top + h, top + h))
    lx = left
    for name in ORDER:
        o.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (lx, top + h + 40, COLOR[name]))
        o.append('<text x="%d" y="%d">%s</text>' % (lx + 16, top + h + 50, esc(LABEL[name])))
        lx += 150
    o.append('<text x="%d" y="%d" fill="#555">%s</text>' % (
        left, top + h + 75, esc('%s, %s cores, %s' % (groups[0]['machine']['cpu'],
                                                       groups[0]['machine']['cores'],
                                                       groups[0]['date'])) if groups else ''))
    o.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(o) + '\n')


def svg_latency(docs, path):
    docs = [d for d in docs if d['scenario'] in ('reg', 'reg-auth')]
    qs = [('0.5', '#59a14f'), ('0.9', '#edc948'), ('0.99', '#f28e2b'), ('0.999', '#e15759')]
    pw, ph, left, top = 360, 240, 60, 50
    width = left + len(docs) * (pw + 60) + 20
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
         'font-size="11">' % (max(width, 500), top + ph + 90),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="20" font-size="14">sipshard in-server latency (receive to send) vs '
         'offered rate, passing trials</text>' % left]
    for i, d in enumerate(docs):
        x0 = left + i * (pw + 60)
        pts = {}
        for r in d['trials']:
            if r.get('pass') and 'sipshard' in r and r['sipshard']['latency_us']:
                pts.setdefault(r['target'], []).append((r['rate'], r['sipshard']['latency_us']))
        allv = [v for s in pts.values() for _, q in s for v in q.values() if v > 0]
        rates = [x for s in pts.values() for x, _ in s]
        if not allv:
            continue
        ymin, ymax = 1, 10 ** math.ceil(math.log10(max(allv) + 1))
        xmax = max(rates) * 1.05
        X = lambda r: x0 + pw * r / xmax
        Y = lambda v: top + ph - ph * (math.log10(max(v, ymin)) - 0) / math.log10(ymax)
        o.append('<text x="%d" y="%d" font-size="12">%s</text>' % (x0, top - 10, esc(d['scenario'])))
        e = 1
        while e <= ymax:
            o.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>' % (x0, x0 + pw, Y(e), Y(e)))
            o.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (x0 - 4, Y(e) + 4, e))
            e *= 10
        for k in range(5):
            r = xmax * k / 4
            o.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (X(r), top + ph + 15, '{:,.0f}'.format(r)))
        o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="black"/>' % (x0, top, pw, ph))
        o.append('<text x="%.1f" y="%d" text-anchor="middle">offered rate (calls/s)</text>' % (x0 + pw / 2, top + ph + 32))
        for tgt, series in pts.items():
            series.sort(key=lambda x: x[0])
            dash = '' if tgt == 'sipshard-2' else ' stroke-dasharray="5,3"'
            for q, col in qs:
                p = ' '.join('%.1f,%.1f' % (X(r), Y(l.get(q, 0))) for r, l in series)
                o.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>' % (p, col, dash))
                for r, l in series:
                    o.append('<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"><title>%s %s/s p%s=%s µs</title></circle>'
                             % (X(r), Y(l.get(q, 0)), col, tgt, r, q, l.get(q)))
    lx = left
    for q, col in qs:
        o.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"/>' % (lx, lx + 20, top + ph + 55, top + ph + 55, col))
        o.append('<text x="%d" y="%d">p%g</text>' % (lx + 24, top + ph + 59, float(q) * 100))
        lx += 80
    o.append('<text x="%d" y="%d">solid: --shards 2, dashed: --shards 1; µs, log scale</text>' % (lx, top + ph + 59))
    o.append('</svg>')
    with open(path, 'w') as f:
        f.write('\n'.join(o) + '\n')


# ---- summary, README -----------------------------------------------------------------------------
def newest(quick, transport='un'):
    """The newest result of each scenario (same mode, same SIPp transport)."""
    out = {}
    # only the files perf/compare names (DATE-SCENARIO[-u1][-quick].json), not side files such
    # as 2026-12-06-trunk-calls-alternating.json
    name = re.compile(r'^\d{4}-\d\d-\d\d-(%s)(-u1)?(-quick)?\.json$'
                      % '|'.join(re.escape(x) for x in SCENARIO_ORDER))
    for p in sorted(glob.glob(os.path.join(RESULTS, '*.json'))):
        if p.endswith('-quick.json') != quick or not name.match(os.path.basename(p)):
            continue
        try:
            with open(p) as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        if 'searches' in d and d.get('transport', 'un') == transport:
            out[d['scenario']] = (p, d)
    return [out[k] for k in SCENARIO_ORDER if k in out]


def readme_section(items, cpu_svg, lat_svg):
    o = [others_avg(d) for _, d in items if others_avg(d) is not None]
    lines = ['Measured by `perf/compare` (issue #6, see perf/README.md): sipshard, Kamailio and a '
             'UDP echo on the same SIPp load, one after the other, each trial under '
             '`flock /tmp/bench.lock`. Details, every trial and the machine: `perf/results/`.', '',
             '```sh', 'perf/compare all             # ~55 min (+ waits for the lock)',
             'perf/compare all --quick     # ~5-10 min',
             'perf/compare reg|reg-auth|calls|trunk-calls [--quick]', '```', '']
    if o:
        lines += ['Server CPU per operation is the figure that counts (SIPp shares the 2 cores, so the '
                  'max rate mostly measures SIPp). These runs were on a shared 2-vCPU VM while other '
                  'processes took ~%.0f%% of one core. Absolute figures move with the VM (Kamailio\'s '
                  'line against its baseline, and the UDP echo against the 3.1 µs per round trip '
                  'measured on a quiet machine, show by how much); compare within a run.' % (sum(o) / len(o)), '']
    for p, d in items:
        lines += ['### %s (%s)' % (d['title'], d['date']), '']
        lines += summary_table(d) + ['']
        g = goal_lines(d)
        if g:
            lines += g + ['']
        lines += ['Source: [%s](perf/results/%s)' % (os.path.basename(p)[:-5] + '.md',
                                                       os.path.basename(p)[:-5] + '.md'), '']
    lines += ['![server CPU per operation](perf/results/%s)' % os.path.basename(cpu_svg), '',
              '![sipshard latency vs rate](perf/results/%s)' % os.path.basename(lat_svg), '']
    return lines


def update_readme(section):
    path = os.path.join(REPO, 'README.md')
    with open(path) as f:
        text = f.read()
    begin, end = '<!-- perf-results:begin -->', '<!-- perf-results:end -->'
    body = begin + '\n' + '\n'.join(section) + end
    if begin in text and end in text:
        a = text.index(begin)
        b = text.index(end) + len(end)
        text = text[:a] + body + text[b:]
    else:
        text = text.rstrip('\n') + '\n\n## Performance\n\n' + body + '\n'
    with open(path, 'w') as f:
        f.write(text)


def print_summary(items):
    for p, d in items:
        print('\n== %s (%s%s)' % (d['scenario'], d['date'], ', quick' if d['quick'] else ''))
        t = by_target(d)
        for name in ORDER:
            s = t.get(name)
            if not s:
                continue
            if s.get('note'):
                print('  %-22s %s' % (LABEL[name], s['note']))
                continue
            b = s.get('best')
            print('  %-22s max %6s/s  CPU %5s µs/op @%s/s, %5s @max  RSS %6s MiB  lat p50/p99/p99.9 %s  hop %s' % (
                LABEL[name], '{:,}'.format(b['rate']) if b else 'none', f1(cpu_fixed(s)),
                '{:,}'.format(d['fixed_rate']), f1(b['cpu_us_per_op']) if b else '–',
                f1(b['rss_kib'] / 1024.0) if b else '–',
                lat(b).replace('/', '/', 3) if b else '–',
                (b or {}).get('sipshard', {}).get('handoff_share', '–')))
        for g in goal_lines(d):
            print('  ' + g.replace('**', ''))
        bad = [r for r in d['trials'] if r.get('counter_mismatch')]
        if bad:
            print('  !!! %d trial(s) with sipshard counters disagreeing with SIPp' % len(bad))
        print('  table: %s' % (p[:-5] + '.md'))


def main():
    args = sys.argv[1:]
    readme = '--readme' in args
    paths = [a for a in args if a != '--readme']
    quick, transport = False, 'un'
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        quick, transport = d['quick'], d.get('transport', 'un')
        write_md(p[:-5] + '.md', d)
    items = newest(quick, transport)
    if not items:
        return
    day = max(d['date'] for _, d in items)
    suffix = ('' if transport == 'un' else '-' + transport) + ('-quick' if quick else '')
    cpu_svg = os.path.join(RESULTS, '%s%s-cpu.svg' % (day, suffix))
    lat_svg = os.path.join(RESULTS, '%s%s-latency.svg' % (day, suffix))
    docs = [d for _, d in items]
    svg_cpu(docs, cpu_svg)
    svg_latency(docs, lat_svg)
    print_summary(items)
    print('\nplots: %s, %s' % (cpu_svg, lat_svg))
    if readme:
        update_readme(readme_section(items, cpu_svg, lat_svg))
        print('README.md: Performance section updated')


if __name__ == '__main__':
    main()

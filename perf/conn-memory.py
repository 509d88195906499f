#!/usr/bin/env python3
"""Server memory per idle connection (issue 16), for each stream transport: plain TCP, TLS,
WebSocket and WebSocket over TLS, measured on the whole process (stdlib only; run as root, which
may raise the open-file limit).

For each kind, a fresh `sipshard --shards 2` (listening on a UDP address and on the kind's
address, `--tcp-max-per-source` and `--tcp-max-connections` raised, started under
`prlimit --nofile`) gets --conns connections (default 50,000) from this process, spread over
source addresses 127.K.0.2.. (K per kind; 28,000 ephemeral ports per source address). Each connection is
established the way a phone's is: TLS handshake (a self-signed certificate made with openssl),
WebSocket upgrade with the `sip` subprotocol, then one OPTIONS answered 200, so every buffer a
live connection holds exists. The server's VmRSS (/proc) before the first connection and after
the last answer gives bytes per connection: (after - before) / conns. The connections are then
closed and the server stopped.

Run under `flock /tmp/bench.lock` (the script re-runs itself under it when it does not hold it).
Writes perf/results/DATE-conn-memory.{json,md} (--out to change).
"""
import argparse
import base64
import datetime
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BINARY = os.path.join(ROOT, 'target', 'release', 'sipshard')
LOCK = '/tmp/bench.lock'
# Whether this machine lets root raise the open-file limit (a container may not).
RAISE = True
KINDS = ['tcp', 'tls', 'ws', 'wss']


def options(i, transport):
    return (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bKm{i}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@localhost>;tag=t\r\nTo: <sip:127.0.0.1>\r\n"
            f"Call-ID: mem-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def ws_frame(payload):
    """A masked client text frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + n.to_bytes(2, 'big')
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_until(sock, marker):
    data = b''
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f'closed before {marker!r}: {data[:200]!r}')
        data += chunk
    return data


def rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_cert(d):
    cert, key = os.path.join(d, 'cert.pem'), os.path.join(d, 'key.pem')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
                    '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1',
                    '-addext', 'subjectAltName=IP:127.0.0.1'], check=True, capture_output=True)
    return cert, key


def measure(kind, conns, cert, key, config):
    udp, port = free_port(), free_port()
    scheme = {'tcp': 'tcp', 'tls': 'tls', 'ws': 'ws', 'wss': 'wss'}[kind]
    limit = conns + 4096
    cmd = ['prlimit', f'--nofile={limit}:{limit}', '--'] if RAISE else []
    cmd += [BINARY, '--shards', '2', '--log', 'warn',
           '--listen', f'udp:127.0.0.1:{udp}', '--listen', f'{scheme}:127.0.0.1:{port}',
           '--tcp-max-per-source', str(conns), '--tcp-max-connections', str(conns)]
    if kind in ('tls', 'wss'):
        cmd += ['--tls-cert', cert, '--tls-key', key]
    # One source opening thousands of connections is not a flood here.
    cmd += ['--config', config]
    server = subprocess.Popen(cmd)
    ctx = ssl.create_default_context(cafile=cert)
    socks = []
    try:
        time.sleep(0.5)
        before = rss_kib(server.pid)
        transport = {'tcp': 'TCP', 'tls': 'TLS', 'ws': 'WS', 'wss': 'WSS'}[kind]
        start = time.time()
        for i in range(conns):
            # A source range per kind: the last kind's closed connections (TIME_WAIT) hold
            # their ephemeral ports for a minute.
            src = f'127.{1 + KINDS.index(kind)}.0.{2 + i // 25000}'
            raw = socket.socket()
            raw.bind((src, 0))
            raw.connect(('127.0.0.1', port))
            s = ctx.wrap_socket(raw, server_hostname='127.0.0.1') if kind in ('tls', 'wss') else raw
            if kind in ('ws', 'wss'):
                wkey = base64.b64encode(os.urandom(16)).decode()
                s.sendall((f'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                           f'Sec-WebSocket-Key: {wkey}\r\nSec-WebSocket-Version: 13\r\n'
                           f'Sec-WebSocket-Protocol: sip\r\n\r\n').encode())
                read_until(s, b'\r\n\r\n')
                s.sendall(ws_frame(options(i, transport)))
            else:
                s.sendall(options(i, transport))
            reply = read_until(s, b'\r\n\r\n')
            if b'SIP/2.0 200' not in reply:
                raise RuntimeError(f'{kind} connection {i}: {reply[:200]!r}')
            socks.append(s)
        setup = time.time() - start
        time.sleep(1.0)
        after = rss_kib(server.pid)
        per = (after - before) * 1024 / conns
        print(f'{kind}: {conns} connections in {setup:.1f} s, RSS {before} -> {after} KiB: '
              f'{per:.0f} bytes ({per / 1024:.2f} KiB) per connection', flush=True)
        return {'kind': kind, 'conns': conns, 'rss_before_kib': before, 'rss_after_kib': after,
                'bytes_per_conn': round(per), 'setup_s': round(setup, 1)}
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--conns', type=int, default=50_000)
    ap.add_argument('--kinds', default='tcp,tls,ws,wss')
    ap.add_argument('--out', default=os.path.join(HERE, 'results', f'{datetime.date.today()}-conn-memory'))
    a = ap.parse_args()
    if os.environ.get('CONN_MEMORY_LOCKED') != '1':
        os.environ['CONN_MEMORY_LOCKED'] = '1'
        os.execvp('flock', ['flock', LOCK, sys.executable] + sys.argv)
    global RAISE
    need = a.conns + 4096
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
    except (ValueError, OSError):
        # Not allowed here (no CAP_SYS_RESOURCE): as many as the hard limit allows, said so.
        RAISE = False
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if a.conns + 1000 > hard:
            print(f'the open-file limit is {hard} and may not be raised here: '
                  f'{hard - 1000} connections instead of {a.conns}', flush=True)
            a.conns = hard - 1000
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_cert(d)
        config = os.path.join(d, 'sipshard.toml')
        with open(config, 'w') as f:
            f.write('[security]\nflood_requests = 0\n')
        results = [measure(k, a.conns, cert, key, config) for k in a.kinds.split(',')]
    doc = {'date': str(datetime.date.today()), 'command': ' '.join(sys.argv), 'results': results}
    with open(a.out + '.json', 'w') as f:
        json.dump(doc, f, indent=2)
    with open(a.out + '.md', 'w') as f:
        f.write(f'# Server memory per idle connection, {doc["date"]}\n\n`{doc["command"]}` '
                '(sipshard --shards 2; each connection established and one OPTIONS answered; '
                'VmRSS of the server before and after)\n\n'
                '| transport | connections | RSS before (KiB) | RSS after (KiB) | per connection |\n'
                '|---|---:|---:|---:|---:|\n')
        for r in results:
            f.write(f'| {r["kind"]} | {r["conns"]} | {r["rss_before_kib"]} | {r["rss_after_kib"]} | '
                    f'{r["bytes_per_conn"] / 1024:.2f} KiB |\n')
    print(f'wrote {a.out}.json and .md')


if __name__ == '__main__':
    main()

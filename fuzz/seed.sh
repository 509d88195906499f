#!/bin/sh
# Fills fuzz/corpus/parse (gitignored) with seeds: the benchmark messages and, when present, the
# RFC 4475/5118 conformance corpus (SIPSHARD_CONFORMANCE_DIR or ../shared/conformance).
# The conformance files are copied at run time only; never commit them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/corpus/parse"
mkdir -p "$out"
python3 - "$here/../benches/support/messages.rs" "$out" <<'PY'
import re, sys
src, out = sys.argv[1], sys.argv[2]
text = open(src).read()
for name, body in re.findall(r'pub const (\w+): &\[u8\] = b"(.*?)";\n', text, re.S):
    raw = body.replace('\\\n', '').replace('\\r', '\r').replace('\\n', '\n').replace('\\"', '"')
    open(f"{out}/bench-{name.lower()}", "wb").write(raw.encode())
PY
conf="${SIPSHARD_CONFORMANCE_DIR:-$here/../../shared/conformance}"
if [ -f "$conf/manifest.tsv" ]; then
    for f in "$conf"/rfc4475/*.dat "$conf"/rfc5118/*.dat; do
        cp "$f" "$out/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
fi
ls "$out" | wc -l

# The core target (fuzz_targets/core.rs): real exchanges in its operation format
# (op, source, u16 little-endian argument, bytes).
core="$here/corpus/core"
mkdir -p "$core"
python3 - "$core" <<'PY'
import struct, sys
out = sys.argv[1]
def dgram(who, text):
    b = text.replace('\n', '\r\n').encode()
    return bytes([0, who]) + struct.pack('<H', len(b)) + b
def answer(who, status_index): return bytes([5, who]) + struct.pack('<H', status_index)
def wait(ms): return bytes([6, 0]) + struct.pack('<H', ms)
reg = lambda user, src: (f"REGISTER sip:localhost SIP/2.0\nVia: SIP/2.0/UDP {src};branch=z9hG4bKr{user}\n"
    f"Max-Forwards: 70\nFrom: <sip:{user}@localhost>;tag=r\nTo: <sip:{user}@localhost>\n"
    f"Call-ID: reg-{user}\nCSeq: 1 REGISTER\nContact: <sip:{user}@{src}>\nExpires: 60\nContent-Length: 0\n\n")
inv = lambda to, b: (f"INVITE sip:{to}@localhost SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{b}\n"
    f"Max-Forwards: 70\nFrom: <sip:alice@localhost>;tag=a1\nTo: <sip:{to}@localhost>\nCall-ID: c-{b}\n"
    f"CSeq: 1 INVITE\nContact: <sip:alice@192.0.2.10:5060>\nContent-Type: application/sdp\nContent-Length: 3\n\nv=0")
cancel = lambda to, b: (f"CANCEL sip:{to}@localhost SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{b}\n"
    f"Max-Forwards: 70\nFrom: <sip:alice@localhost>;tag=a1\nTo: <sip:{to}@localhost>\nCall-ID: c-{b}\n"
    f"CSeq: 1 CANCEL\nContent-Length: 0\n\n")
indialog = lambda m, b, n: (f"{m} sip:bob@192.0.2.20:5062 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{m}{b}\n"
    f"Route: <sip:127.0.0.1:5060;lr;ss=0>\nMax-Forwards: 70\nFrom: <sip:alice@localhost>;tag=a1\n"
    f"To: <sip:bob@localhost>;tag=f{n}\nCall-ID: c-{b}\nCSeq: {2 if m == 'BYE' else 1} {m}\nContent-Length: 0\n\n")
seeds = {
    'register': dgram(3, reg('bob', '192.0.2.20:5062')) + wait(1000),
    'call': dgram(3, reg('bob', '192.0.2.20:5062')) + dgram(2, inv('bob', 'c1')) + answer(0, 1)
        + answer(1, 3) + dgram(2, indialog('ACK', 'c1', 1)) + dgram(2, indialog('BYE', 'c1', 1))
        + answer(2, 3) + wait(40000),
    'cancel': dgram(3, reg('bob', '192.0.2.20:5062')) + dgram(2, inv('bob', 'c2'))
        + dgram(2, cancel('bob', 'c2')) + answer(0, 8) + wait(65000),
    'trunk': dgram(2, inv('+4930123', 'c3')) + answer(1, 8) + wait(3000),
    'emergency': dgram(2, inv('112', 'c4')) + answer(0, 3) + wait(65000),
}
for name, b in seeds.items():
    open(f"{out}/{name}", 'wb').write(b)
PY
ls "$core" | wc -l

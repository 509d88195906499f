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

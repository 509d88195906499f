#!/bin/sh
# Instructions per parse (plus the accessors of benches/support/parsers.rs) for each benchmark
# message, counted by callgrind: a run of 3000 iterations minus a run of 1000, divided by 2000.
# Independent of the machine's load, so it gives a stable before/after on a shared VM.
#
#   cargo build --release --example parse_count
#   perf/parse-instructions.sh [sipshard|parse|validate|rsip|ezk-sip-types|sipx-sip]
#
# `parse` is Message::parse alone, `validate` is Message::parse plus Message::validate.
set -e
bin=${CARGO_TARGET_DIR:-target}/release/examples/parse_count
p=${1:-sipshard}
for m in register invite response200; do
  a=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" $m 1000 "$p" 2>&1 | grep -o 'refs: *[0-9,]*' | tr -dc 0-9)
  b=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" $m 3000 "$p" 2>&1 | grep -o 'refs: *[0-9,]*' | tr -dc 0-9)
  echo "$m $(( (b - a) / 2000 ))"
done

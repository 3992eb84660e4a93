#!/usr/bin/env bash
# make bench (inside `envctl.py run`): figures 1-5 from benches/versus_connect.rs, then figure 6, the automatic
# recovery from a lost resume token on the loopback cluster, from the recovery test's own measurement (three
# runs). Everything is the release build: `make bench` starts the environment with SLUICE_BINARY pointing the
# local node's task pods at target/release/sluice, and the recovery test's operator is that binary too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench versus_connect
echo
log=$(mktemp)
trap 'rm -f "$log"' EXIT
figures=()
for i in 1 2 3; do
  # The test prints the figure before its last assertions: a run counts only if the test passed too.
  ms=
  if SLUICE_REQUIRE_ENV=1 cargo test --release --locked --test recovery \
    a_lost_resume_token_rotates_the_partition_and_a_new_task_streams_without_anyone -- --nocapture >"$log" 2>&1; then
    ms=$(sed -nE 's/.*resume token lost -> first record.*: ([0-9]+) ms after the loss.*/\1/p' "$log")
  fi
  if [ -z "$ms" ]; then
    echo "recovery run $i failed; the recovery test printed:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  echo "recovery run $i: $ms ms (loss scripted -> first record from the rotated task)" >&2
  figures+=("$ms")
done
median=$(printf '%s\n' "${figures[@]}" | sort -n | sed -n 2p)
echo "| 6. lost resume token → first record after automatic rotation (loopback cluster) | ${median} ms | needs a human: rename offset.partition.name or delete offsets, restart | — |"

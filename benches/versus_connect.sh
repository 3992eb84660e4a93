#!/usr/bin/env bash
# make bench (inside `envctl.py run`): figures 1-5 from benches/versus_connect.rs (release build), then figure 6,
# the automatic recovery from a lost resume token on the loopback cluster, from the recovery test's own
# measurement (three runs; task pods run the debug build the local node maps the image to).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench versus_connect
echo
figures=()
for i in 1 2 3; do
  line=$(SLUICE_REQUIRE_ENV=1 cargo test --locked --test recovery \
    a_lost_resume_token_rotates_the_partition_and_a_new_task_streams_without_anyone -- --nocapture 2>/dev/null \
    | grep 'resume token lost -> first record' || true)
  ms=$(sed -nE 's/.*: ([0-9]+) ms after the loss.*/\1/p' <<<"$line")
  echo "recovery run $i: ${ms:-failed} ms (loss scripted -> first record from the rotated task)" >&2
  [ -n "$ms" ] && figures+=("$ms")
done
median=$(printf '%s\n' "${figures[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}')
echo "| 6. lost resume token → first record after automatic rotation (loopback cluster) | ${median} ms | needs a human: rename offset.partition.name or delete offsets, restart | — |"

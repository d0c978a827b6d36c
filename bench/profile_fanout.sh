#!/usr/bin/env bash
# Profile fanout in-process (bench/fanout_cpu.py) with py-spy after its warm-up; fold the stacks.
# --gil: only samples holding the GIL, i.e. Python running (py-spy counts threads parked on a
# lock or a socket as busy here, so wall samples would show idle pool threads).
#   bench/profile_fanout.sh OUT.txt [SECONDS]     (py-spy: .venv/bin/pip install py-spy)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?output file}; seconds=${2:-20}
py=.venv/bin/python
log=$(mktemp)
$py -m bench.fanout_cpu --messages 3000 --rounds 1 --warmup 300 --settle 2 >/dev/null 2>"$log" &
driver=$!
until grep -q "warmed up" "$log"; do
  kill -0 "$driver" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.2
done
pid=$(sed -n 's/.*warmed up (pid \([0-9]*\)).*/\1/p' "$log")
.venv/bin/py-spy record --gil -r 400 -f raw -o "$out" -d "$seconds" --pid "$pid" >/dev/null 2>&1
wait "$driver"
cat "$log" >&2
$py -m bench.fanout_cpu --fold "$out"

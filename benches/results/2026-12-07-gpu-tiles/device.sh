#!/usr/bin/env bash
# Issue 17 on the lent GPU machine: input_size "native" and tiles on the GPU path.
# usage: device.sh PAYLOAD_DIR (unpacked: vigil, it-test, run.sh, gst; /tmp/ort and /tmp/assets
# from `cargo xtask gpu-payload`'s parts, with vtest-far.mp4 in /tmp/assets). Run time-boxed
# from benches/results/2026-12-07-live-150/device.sh (one device call for both issues).
set -u
cd "$(dirname "$0")/../../.."
P=${1:?payload dir}
R="bash $P/run.sh"
t0=$SECONDS
left() { [ $((SECONDS - t0)) -lt "$1" ]; }
# 1. GPU path = CPU path with tiles and "native" (and the existing checks).
$R $P/it-test gpu_probe:: --nocapture --test-threads 1 > $OUT/i17-gpu-probe.txt 2>&1
grep -E "^test |test result|sizing:|matched|GPU path = CPU" $OUT/i17-gpu-probe.txt
# 2. The eval set's wide scene on the GPU path.
ev() { left 150 || return; echo "== eval $*"; $R $P/vigil eval tests/data/eval/vtest-far \
  --set model.backend=cuda "$@" 2>&1 | grep -vE "^\s*$" | tail -14; }
{ ev; ev --set 'model.tiles.grid=[2,2]' --set model.tiles.full_frame=false; ev --set model.input_size=native; } \
  > $OUT/i17-eval-far-gpu.txt 2>&1
cat $OUT/i17-eval-far-gpu.txt | head -50
# 3. Cost per frame on the GPU: 16 streams of the 1080p30 clip, each setting.
for s in "" 'tiles = { grid = [2, 2], full_frame = false }' 'input_size = "native"'; do
  left 215 || break
  echo "== bench ${s:-416}"
  $R $P/vigil bench --gpu --streams 16 --workers 4 --warmup 2 --seconds 4 ${s:+--model-line "$s"} 2>&1 | tail -3
done > $OUT/i17-bench-gpu-sizing.txt 2>&1
cat $OUT/i17-bench-gpu-sizing.txt
echo "issue 17 checks: $((SECONDS - t0)) s"

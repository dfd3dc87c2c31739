#!/usr/bin/env bash
# Issue 18's ten-minute run (and issue 17's GPU tests) on the lent GPU machine. Stages, each one
# device call, back to back (the payload parts already in /tmp/ort and /tmp/assets):
#   PAYLOAD=dir [VIGIL_XZ=file] bash device.sh short — unpacks the payload (dir/p.tar.xz), runs
#       the GPU tests
#   bash device.sh start N SECONDS — starts the live bench at N cameras for one window of SECONDS,
#       detached (setsid), so that it may outlast one call; returns at once
#   bash device.sh wait LIMIT — waits (at most LIMIT s) for it to end; copies its results to $OUT
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."
stage=${1:?stage}
P=/tmp/p18b
case $stage in
short)
  src="${PAYLOAD:?payload dir}"
  rm -rf $P && mkdir -p $P && tar xJf "$src/p.tar.xz" -C $P
  sed -i "s#gpu-payload/#$P/#g" $P/run.sh
  # VIGIL_XZ=file: a newer vigil than the payload's (the GPU tests run `vigil gpu-check`).
  if [ -n "${VIGIL_XZ:-}" ]; then xz -dc "$VIGIL_XZ" > $P/vigil && chmod +x $P/vigil; fi
  nvidia-smi -L; nproc
  bash $P/run.sh $P/it-test gpu_probe:: --nocapture --test-threads 1 > $OUT/gpu-probe${VIGIL_XZ:+-newer}.txt 2>&1
  grep -E "^test |test result|sizing:|matched|only on the|GPU path = CPU|panicked" $OUT/gpu-probe*.txt ;;
start)
  c=${2:?cameras}; secs=${3:?seconds}
  rm -rf /tmp/long && mkdir -p /tmp/long
  # Server and Vigil on their own cores, as in 2026-12-07-live-150.
  setsid nohup bash -c "bash $P/run.sh $P/xtask live-bench --vigil $P/vigil --model models/nanodet.onnx \
    --clip .cache/media/vtest-1080p30.mp4 --mosquitto $P/mosq/mosquitto-wrapper \
    --server-cpus 12-15 --vigil-cpus 0-11 --env MALLOC_ARENA_MAX=2 --warmup-s 10 \
    --cameras $c --seconds $secs --out /tmp/long > /tmp/long.log 2>&1; echo rc=\$? >> /tmp/long.log" \
    < /dev/null > /dev/null 2>&1 &
  sleep 20; tail -3 /tmp/long.log; pgrep -c vigil ;;
wait)
  limit=${2:?limit}; t0=$SECONDS
  while ! grep -q '^rc=' /tmp/long.log 2>/dev/null && [ $((SECONDS - t0)) -lt "$limit" ]; do sleep 5; done
  tail -12 /tmp/long.log; cp /tmp/long.log $OUT/ 2>/dev/null
  cp /tmp/long/live-bench.md /tmp/long/live-bench.json $OUT/ 2>/dev/null; ls $OUT ;;
esac

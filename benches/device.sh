#!/usr/bin/env bash
# The GPU work left open (issues 17 and 18), for the lent GPU machine, after `cargo xtask
# gpu-payload` here and its parts sent (gpu-parts-aa..ad: `mkdir -p /tmp/ort && cp
# gpu-parts-XX/part-* /tmp/ort/`, one call each). Then stages, each one device call, back to back:
#   PAYLOAD=dir bash benches/device.sh short — dir holds the media (the gpu-parts-media files) and
#       p.tar.xz (`tar cJf dir/p.tar.xz -C gpu-payload .`): puts the media and ONNX Runtime in
#       place, unpacks the payload, runs the GPU tests (gpu_probe::) → $OUT/gpu-probe.txt
#   bash benches/device.sh crash [RUNS] — `vigil bench --gpu` at 16 streams RUNS times (default 3),
#       each run's exit status and standard error kept → $OUT/bench16-K.txt: a crash at exit now
#       leaves the fatal-signal report (module+offset of each frame; symbolize here with
#       `addr2line -f -C -i -e target/release/vigil OFFSET` on the same build)
#   bash benches/device.sh start N SECONDS — the live bench at N cameras for SECONDS, detached
#   bash benches/device.sh wait LIMIT — waits for it; its results and Vigil's exit → $OUT
set -u
cd "$(dirname "$0")/.."
stage=${1:?stage}
P=/tmp/vigil-payload
case $stage in
short)
  src="${PAYLOAD:?a folder with the media and p.tar.xz}"
  mkdir -p /tmp/assets && cp "$src"/*.mp4 "$src"/*.png "$src"/*.onnx /tmp/assets/
  [ -d /tmp/ort/lib ] || bash "$src/unpack.sh" /tmp/ort
  rm -rf $P && mkdir -p $P && tar xJf "$src/p.tar.xz" -C $P
  sed -i "s#gpu-payload/#$P/#g" $P/run.sh
  nvidia-smi -L; nproc
  bash $P/run.sh $P/it-test gpu_probe:: --nocapture --test-threads 1 > $OUT/gpu-probe.txt 2>&1
  grep -E "^test |test result|matched|only on the|panicked" $OUT/gpu-probe.txt ;;
crash)
  runs=${2:-3}
  for k in $(seq 1 "$runs"); do
    bash $P/run.sh $P/vigil bench --gpu --streams 16 --workers 4 --warmup 3 --seconds 8 \
      > $OUT/bench16-$k.txt 2>&1
    echo "exit=$?" >> $OUT/bench16-$k.txt
    grep -E "^\| 16|exit=|fatal" $OUT/bench16-$k.txt
  done ;;
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
  cp -r /tmp/long/. $OUT/ 2>/dev/null; ls $OUT ;;
*) echo "stages: short, crash [RUNS], start N SECONDS, wait LIMIT" >&2; exit 2 ;;
esac

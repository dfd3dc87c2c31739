#!/usr/bin/env bash
# GPU soak, part 1 (issue 15 item 6): `xtask soak` on the GPU machine, 64 file cameras of the
# 1080p30 clip on the GPU path, 10 minutes, started in the background (one device call may run
# 10 minutes at most); part 2 (gpu-soak-collect.sh) waits for it and copies its output.
set -u
for f in gpu-payload/xtask gpu-payload/vigil gpu-payload/mosq/mosquitto-wrapper /tmp/assets/nanodet.onnx \
  /tmp/assets/vtest-1080p30.mp4; do
  [ -e "$f" ] || { echo "missing $f: run cargo xtask gpu-payload and send the parts first"; exit 1; }
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
rm -rf /tmp/gsoak; mkdir -p /tmp/gsoak
cp -r gpu-payload /tmp/gsoak/gpu-payload
cd /tmp/gsoak
# run.sh copies the assets into ./models and ./.cache/media, then runs the command.
setsid nohup bash gpu-payload/run.sh gpu-payload/xtask soak --vigil gpu-payload/vigil \
  --model /tmp/assets/nanodet.onnx --clip /tmp/assets/vtest-1080p30.mp4 \
  --mosquitto gpu-payload/mosq/mosquitto-wrapper --backend cuda --source file \
  --cameras 64 --fps 15 --minutes 10 --warmup-minutes 2 --env MALLOC_ARENA_MAX=2 --out /tmp/gsoak/out \
  > /tmp/gsoak/soak.log 2>&1 < /dev/null &
pid=$!
# Wait (up to 560 s, the rest of this call), leaving early if the soak has ended or died.
for i in $(seq 56); do
  sleep 10
  [ -f /tmp/gsoak/out/summary.txt ] && break
  kill -0 $pid 2>/dev/null || { echo "the soak exited early:"; tail -20 /tmp/gsoak/soak.log; exit 1; }
done
tail -5 /tmp/gsoak/soak.log; tail -3 /tmp/gsoak/out/samples.csv

#!/usr/bin/env bash
# The moved binary on the GPU through reloads: a model swap in its worker (threads changed), a
# rules-only change, a GPU -> CPU rebuild and back, then SIGTERM: no crash, exit 0.
set -u
R=gpu-payload/run.sh; d=/tmp/swap; rm -rf $d; mkdir -p $d
cat > $d/v.toml <<T
[device]
id = "gpu-swap"
[mqtt]
host = "127.0.0.1"
port = 1
[storage]
dir = "$d/state"
[http]
listen = ""
[models.m]
path = "/tmp/assets/nanodet.onnx"
kind = "nanodet"
backend = "cuda"
threads = 1
[[cameras]]
name = "a"
url = "file:///tmp/assets/vtest-1080p30.mp4"
model = "m"
fps = 15
[[cameras]]
name = "b"
url = "file:///tmp/assets/vtest-1080p30.mp4"
model = "m"
fps = 15
[[cameras.zones]]
name = "all"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
events = ["enter"]
T
bash $R gpu-payload/vigil run --config $d/v.toml > $OUT/swap.log 2>&1 &
bg=$!
sleep 30; pid=$(pgrep -x vigil | head -1); echo "vigil pid $pid"
step() { sed -i "$1" $d/v.toml; kill -HUP $pid; sleep $2; }
step 's/^threads = 1/threads = 2/' 20
step 's/^fps = 15$/fps = 15\nmin_score = 0.5/' 10
step 's/^backend = "cuda"/backend = "cpu"/' 25
step 's/^backend = "cpu"/backend = "cuda"/' 30
kill -TERM $pid; for i in $(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done
wait $bg; echo "vigil exit status $? (still running: $(kill -0 $pid 2>/dev/null && echo yes || echo no))"
grep -nE 'reload|swap|model loaded|CUDA failure|panick|terminate|abort|ERROR|stopped' $OUT/swap.log | cut -c1-300 | tail -40
echo "events: $(grep -c 'vigil::events' $OUT/swap.log), last at $(grep 'vigil::events' $OUT/swap.log | tail -1 | cut -c12-19)"

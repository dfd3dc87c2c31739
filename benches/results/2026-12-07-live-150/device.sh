#!/usr/bin/env bash
# Issue 18 (and 17) on the lent GPU machine. Stages, each one device call, back to back (the
# payload parts already in /tmp/ort and /tmp/assets):
#   PAYLOAD=gpu-p18 bash device.sh short — unpacks the payload, runs issue 17's GPU checks
#       (benches/results/2026-12-07-gpu-tiles/device.sh) and the unthrottled 16-stream ratio
#   bash device.sh scan N SECONDS [N SECONDS ...] — the live bench at N cameras, one window each
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."
stage=${1:?stage}
P=/tmp/p18   # the payload as it was when the long run started (a later call may carry another)
lb() { # live-bench with the payload's paths; server and Vigil on their own cores
  bash $P/run.sh $P/xtask live-bench --vigil $P/vigil --model models/nanodet.onnx \
    --clip .cache/media/vtest-1080p30.mp4 --mosquitto $P/mosq/mosquitto-wrapper \
    --server-cpus 12-15 --vigil-cpus 0-11 --env MALLOC_ARENA_MAX=2 --warmup-s 10 "$@"
}
held() { # "yes" when the row in $1/live-bench.json kept up: mean ≥ 29.5 fps, none below 29, 0 restarts
  python3 - "$1/live-bench.json" <<'PY'
import json,sys
rows=json.load(open(sys.argv[1]))
rows=rows if isinstance(rows,list) else (rows.get("vigil") or rows.get("rows") or [rows])
r=rows[-1]
print(json.dumps(r)[:2000], file=sys.stderr)
ok=r.get("fps_mean",0)>=29.5 and r.get("fps_min",0)>=29.0 and r.get("restarts_in_window",1)==0 and r.get("not_started",1)==0
print("yes" if ok else "no")
PY
}
case $stage in
short)  # unpack; issue 17's checks; the unthrottled 16-stream ratio
  src="${PAYLOAD:-gpu-payload}"
  rm -rf $P && mkdir -p $P
  if [ -f "$src/p.tar.xz" ]; then tar xJf "$src/p.tar.xz" -C $P; else cp -r "$src"/. $P/; fi
  sed -i "s#gpu-payload/#$P/#g" $P/run.sh
  [ -f "$src/vtest-far.mp4" ] && cp "$src/vtest-far.mp4" /tmp/assets/
  nvidia-smi -L; nproc
  bash $P/run.sh true
  [ -x $P/it-test ] && timeout 250 bash benches/results/2026-12-07-gpu-tiles/device.sh $P 2>&1 | tail -60
  bash $P/run.sh $P/vigil bench --gpu --streams 16 --workers 4 --warmup 3 --seconds 8 \
    --json $OUT/ratio16.json 2>&1 | tail -8 | tee $OUT/ratio16.txt ;;
scan)  # live cameras: scan N SECONDS [N SECONDS ...]
  shift
  while [ $# -ge 2 ]; do
    c=$1; secs=$2; shift 2
    lb --cameras $c --seconds $secs --out /tmp/scan$c > /tmp/scan$c.log 2>&1
    tail -6 /tmp/scan$c.log; cp /tmp/scan$c/live-bench.md $OUT/scan$c-${secs}s.md 2>/dev/null
    cp /tmp/scan$c/live-bench.json $OUT/scan$c-${secs}s.json 2>/dev/null
    echo "held at $c: $(held /tmp/scan$c)"
  done ;;
esac

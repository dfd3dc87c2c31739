#!/usr/bin/env bash
# Device check after the typed data-plane errors (issue 11): the binary of this HEAD
# (gpu-payload/vigil) on the lent GPU: CPU/GPU equality, the GPU probe tests, a 16-stream bench.
set -u
R=gpu-payload/run.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/device.txt
timeout 240 bash $R gpu-payload/vigil gpu-check --model models/nanodet.onnx --clip .cache/media/vtest-30s.mp4 > $OUT/gpu-check.txt 2>&1
echo "gpu-check rc=$?" | tee -a $OUT/summary.txt
grep -E 'max \||worst|matched|device→host|gpu-check:' $OUT/gpu-check.txt >> $OUT/summary.txt
timeout 200 bash $R gpu-payload/it-test gpu_probe:: > $OUT/gpu-tests.txt 2>&1
echo "gpu-tests rc=$?" | tee -a $OUT/summary.txt
grep -E '^test |test result' $OUT/gpu-tests.txt >> $OUT/summary.txt
for i in 1 2; do
  timeout 120 bash $R gpu-payload/vigil bench --gpu --streams 16 --workers 4 --warmup 3 --seconds 8 > $OUT/bench-$i.txt 2>&1
  echo "bench $i rc=$?" >> $OUT/summary.txt
  grep -E '^ +N |^ +16 ' $OUT/bench-$i.txt | sed "s/^/[$i] /" >> $OUT/summary.txt
done
cat $OUT/summary.txt

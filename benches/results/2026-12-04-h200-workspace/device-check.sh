#!/usr/bin/env bash
# Device check of the workspace split: the moved binary (gpu-payload/vigil) against the binary of
# ba43e9c (gpu-before/vigil, the last commit before the split), on the same H200, same payload.
set -u
R=gpu-payload/run.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/device.txt
for who in after before; do
  bin=gpu-payload/vigil; [ $who = before ] && bin=gpu-before/vigil
  timeout 240 bash $R $bin gpu-check --model models/nanodet.onnx --clip .cache/media/vtest-30s.mp4 > $OUT/gpu-check-$who.txt 2>&1
  echo "gpu-check $who rc=$?" | tee -a $OUT/summary.txt
  grep -E 'max \||worst|matched|device→host|gpu-check:' $OUT/gpu-check-$who.txt | sed "s/^/[$who] /" >> $OUT/summary.txt
done
timeout 200 bash $R gpu-payload/it-test gpu_probe:: > $OUT/gpu-tests.txt 2>&1
echo "gpu-tests rc=$?" | tee -a $OUT/summary.txt
grep -E '^test |test result' $OUT/gpu-tests.txt >> $OUT/summary.txt
for i in 1 2; do for who in after before; do
  bin=gpu-payload/vigil; [ $who = before ] && bin=gpu-before/vigil
  timeout 150 bash $R $bin bench --gpu --streams 16 --workers 4 --warmup 3 --seconds 8 > $OUT/bench-$who-$i.txt 2>&1
  echo "bench $who $i rc=$?" >> $OUT/summary.txt
  grep -E '^ +N |^ +16 ' $OUT/bench-$who-$i.txt | sed "s/^/[$who $i] /" >> $OUT/summary.txt
done; done
cat $OUT/summary.txt

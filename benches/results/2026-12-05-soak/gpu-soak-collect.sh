#!/usr/bin/env bash
# GPU soak, part 2: wait for the soak started by gpu-soak-start.sh, then copy its output.
for i in $(seq 170); do [ -f /tmp/gsoak/out/summary.txt ] && break; sleep 3; done
sleep 2
cp /tmp/gsoak/soak.log /tmp/gsoak/out/samples.csv /tmp/gsoak/out/summary.txt /tmp/gsoak/out/vigil.toml $OUT/ 2>/dev/null
tail -c 2000000 /tmp/gsoak/out/vigil.log > $OUT/vigil.log.tail
tail -30 /tmp/gsoak/soak.log

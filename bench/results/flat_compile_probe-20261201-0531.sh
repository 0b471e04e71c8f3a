#!/bin/bash
cd /work/main
export MINDRUN_CACHE_DIR=/tmp/do1/cache
for round in 1 2; do
for red in per_tensor flat; do
  out=/tmp/flatprobe/$red-$round; rm -rf $out
  .venv/bin/python -m launcher --worker_num 2 --local_worker_num 2 --bind_core True --master_port 0 --log_dir $out/logs -m trainer train --config small --data-dir /work/shared/data/multi30k --set train.out_dir=$out --set train.max_steps=2 --set train.eval_every=0 --set data.valid_limit=16 --set train.progress=false --set train.compile_cache=false --set parallel.grad_reduce=$red > $out.log 2>&1
  echo "$red $round rc=$? $(grep -o 'start-up: .*' $out.log | head -1)"
done; done

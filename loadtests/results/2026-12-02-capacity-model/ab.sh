#!/bin/bash
# A/B of CPU per delivery: issue 12's results commit (6196995, "old") against main ("new"),
# steady.py at 4,000 deliveries/s, alternating old/new twice.
for round in 1 2; do
  for variant in old new; do
    if [ $variant = old ]; then tree=/work/wt-old; else tree=/work/main; fi
    out=/tmp/ab/$variant-$round; mkdir -p $out
    (cd $tree && .venv/bin/python loadtests/steady.py --targets chat --rates 4000,8000 --repeats 1 --seconds 15 --warmup-seconds 8 --out $out > $out/run.log 2>&1)
  done
done

#!/bin/bash
# A/B of CPU per delivery: the commit before the fan-out owner refactor (4ebf6bf, "old",
# worktree /work/wt-base) against the commit after it (560cb25, "new", /work/wt-new), each
# with its own venv. steady.py on a fresh cluster per run, alternating old/new.
#   ab.sh "1 2" 4000,6000,8000,10000 "old new"     the main sweep, 01:16-01:23 UTC
#   ab.sh "3" 6000,10000 "new old"                 round 3, 01:34-01:37 UTC
rounds=${1:-"1 2"}; rates=${2:-4000,6000,8000,10000}; order=${3:-"old new"}
for round in $rounds; do
  for variant in $order; do
    if [ $variant = old ]; then tree=/work/wt-base; else tree=/work/wt-new; fi
    out=/tmp/ab/$variant-$round; mkdir -p $out
    echo "$variant-$round start $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a /tmp/ab/times.log
    (cd $tree && .venv/bin/python loadtests/steady.py --targets chat --rates $rates --repeats 1 \
        --seconds 15 --warmup-seconds 8 --out $out > $out/run.log 2>&1)
    echo "$variant-$round end   $(date -u +%FT%TZ) rc=$?" | tee -a /tmp/ab/times.log
  done
done

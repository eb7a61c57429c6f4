#!/bin/bash
# More A/B pairs below and at the edge of the machine's saturation, ABBA order, beyond the
# brief's rounds; same trees and steady.py options as ab.sh. Redis' INFO commandstats is
# sampled every 2 s during each run (redis-sampler.sh) for the commands per message.
#   RATES=2000,3000,4000 RUNS="new-4 old-4 old-5 new-5" ab-more.sh    01:37-01:42 UTC
#   RATES=4000,6000      RUNS="old-6 new-6 new-7 old-7" ab-more.sh    01:43-01:47 UTC
#   RATES=2000,3000,4000 RUNS="old-8 new-8 new-9 old-9" ab-more.sh    01:49-01:54 UTC
rates=${RATES:-2000,3000,4000}
for run in ${RUNS:-new-4 old-4 old-5 new-5}; do
  variant=${run%-*}
  if [ $variant = old ]; then tree=/work/wt-base; else tree=/work/wt-new; fi
  out=/tmp/ab/$run; mkdir -p $out
  echo "$run start $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a /tmp/ab/times.log
  newest=$(ls -dt /tmp/steady-* | head -1)
  /tmp/ab-results/redis-sampler.sh $out/redis-commandstats.txt $newest &
  sampler=$!
  (cd $tree && .venv/bin/python loadtests/steady.py --targets chat --rates $rates --repeats 1 \
      --seconds 15 --warmup-seconds 8 --out $out > $out/run.log 2>&1)
  echo "$run end   $(date -u +%FT%TZ) rc=$?" | tee -a /tmp/ab/times.log
  wait $sampler
done

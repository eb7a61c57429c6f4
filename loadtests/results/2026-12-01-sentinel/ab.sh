#!/bin/bash
# A/B/A/B: Sentinel with WAIT 1 (B) against Sentinel acking on the primary (A) and one Redis (C).
cd /work/main
common="--targets chat --rates 2000,4000 --repeats 1 --seconds 10 --warmup-seconds 8"
for round in 1 2; do
  .venv/bin/python loadtests/steady.py $common --setting REDIS_HA=sentinel --setting REDIS_ACK_REPLICAS=0 --out /tmp/wait/A$round
  .venv/bin/python loadtests/steady.py $common --setting REDIS_HA=sentinel --setting REDIS_ACK_REPLICAS=1 --out /tmp/wait/B$round
  .venv/bin/python loadtests/steady.py $common --out /tmp/wait/C$round
done

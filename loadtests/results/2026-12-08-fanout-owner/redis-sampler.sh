#!/bin/bash
# While one steady.py run is going: every 2 s, Redis' INFO commandstats and cpu of the
# newest /tmp/steady-* cluster (newer than $2), appended to $1; ends when that Redis is gone.
out=$1; after=$2
for _ in $(seq 120); do
  dir=$(ls -dt /tmp/steady-* 2>/dev/null | head -1)
  if [ "$dir" != "$after" ] && [ -f "$dir/settings.json" ]; then
    port=$(python3 -c "import json;print(json.load(open('$dir/settings.json'))['settings']['REDIS_PORT'])")
    redis-cli -p $port ping > /dev/null 2>&1 && break
  fi
  sleep 1
done
echo "# $dir port $port" > $out
while redis-cli -p $port ping > /dev/null 2>&1; do
  echo "## $(date +%s.%N)" >> $out
  redis-cli -p $port info commandstats | grep -E "^cmdstat_" >> $out
  redis-cli -p $port info cpu | grep -E "^used_cpu_(sys|user):" >> $out
  sleep 2
done

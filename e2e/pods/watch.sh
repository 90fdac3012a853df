#!/bin/bash
# Runs in the e2e's watcher pod: every 0.3 s, four operations on the volume at /data,
# one line each time what they return changes.
#   direct-read   4 MiB of /data/payload with O_DIRECT (reaches the device)
#   cached-read   a small file likely in the page cache
#   write+fsync   4 KiB written and fsynced
#   ls            a directory listing
probe() {
  local e
  if e=$("$@" 2>&1 >/dev/null); then
    echo ok
  else
    e=${e%%$'\n'*} # the first line: "dd: error reading '/data/payload': Input/output error"
    echo "ERR(${e##*: })"
  fi
}
last="" n=0
while true; do
  n=$((n + 1))
  r=$(probe dd if=/data/payload of=/dev/null bs=1M count=4 iflag=direct status=none)
  c=$(probe cat /data/payload.sha256)
  w=$(probe dd if=/dev/zero of="/data/probe-$CONTAINER" bs=4k count=1 conv=fsync status=none)
  l=$(probe ls /data)
  s="direct-read=$r cached-read=$c write+fsync=$w ls=$l"
  if [ "$s" != "$last" ]; then
    echo "$(date +%T.%3N) #$n $s"
    last=$s
  fi
  sleep 0.3
done

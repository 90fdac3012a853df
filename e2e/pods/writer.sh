#!/bin/bash
# Runs in the e2e's writer pods (check 2): writes and verifies without pause, no probe.
#   writer.sh fs DIR         files DIR/f0..f63, each 16 KiB written with O_DIRECT and fsynced
#   writer.sh block DEVICE   16 KiB blocks 0..255 of the raw device, O_DIRECT and fsynced
# One operation after another, 20 ms apart: random data written, fsynced, read back with O_DIRECT and
# compared. Logs one "ERR" line per failed operation, one "SLOW <ms> ms" line per operation
# that took over 500 ms (the pause the pod saw), a status line every 500 operations.
# Acknowledged writes go to /tmp/sums ("key sha256"). `touch /tmp/stop` ends the loop
# (then /tmp/stopped exists and the longest operation is logged).
#   writer.sh verify fs DIR | verify block DEVICE
# reads back the last acknowledged content of every file or block (O_DIRECT) and prints
# "verified N keys" or the first key that differs (exit 1).
set -u
verify=""
if [ "$1" = verify ]; then verify=1; shift; fi
mode=$1 target=$2
read_key() { # key -> sha256 of what the volume holds now
  if [ "$mode" = fs ]; then
    dd if="$target/$1" bs=16k iflag=direct status=none | sha256sum | cut -c1-64
  else
    dd if="$target" bs=16k skip="$1" count=1 iflag=direct status=none | sha256sum | cut -c1-64
  fi
}
if [ -n "$verify" ]; then
  n=0
  while read -r k s; do
    [ "$(read_key "$k")" = "$s" ] || { echo "key $k differs from its last acknowledged write"; exit 1; }
    n=$((n + 1))
  done < <(tac /tmp/sums | sort -s -u -k1,1)
  echo "verified $n keys ($(wc -l < /tmp/sums) acknowledged writes)"
  exit 0
fi
ms() { echo $(((${EPOCHREALTIME/./} - ${1/./}) / 1000)); }
i=0 ok=0 max=0
while [ ! -e /tmp/stop ]; do
  if [ "$mode" = fs ]; then k=f$((i % 64)); else k=$((i % 256)); fi
  t0=$EPOCHREALTIME
  if head -c 16384 /dev/urandom > /tmp/b && s=$(sha256sum < /tmp/b | cut -c1-64) &&
    if [ "$mode" = fs ]; then
      dd if=/tmp/b of="$target/$k" bs=16k oflag=direct conv=fsync status=none
    else
      dd if=/tmp/b of="$target" bs=16k seek="$k" oflag=direct conv=fsync,notrunc status=none
    fi && [ "$(read_key "$k")" = "$s" ]; then
    ok=$((ok + 1))
    echo "$k $s" >> /tmp/sums
  else
    echo "$(date +%T.%3N) ERR at $k"
  fi
  d=$(ms "$t0")
  [ "$d" -gt "$max" ] && max=$d
  [ "$d" -gt 500 ] && echo "$(date +%T.%3N) SLOW $d ms at $k"
  i=$((i + 1))
  [ $((i % 500)) = 0 ] && echo "$(date +%T.%3N) $ok writes ok (longest $max ms)"
  sleep 0.02
done
echo "$(date +%T.%3N) stopped: $ok writes ok of $i, longest operation $max ms"
touch /tmp/stopped
exec sleep infinity

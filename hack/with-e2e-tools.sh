#!/usr/bin/env bash
# Runs "$@" (make test's steps) while e2e/build-tools.sh builds the end-to-end
# test's Kubernetes binaries in the background. On a machine that has to build
# them that is about 18 minutes on two cores, and the steps before the e2e (vet,
# unit and Ceph tests, the DR drill) leave about half of the two cores idle.
# e2e/run.sh runs build-tools.sh again: its lock makes that run wait for this
# build and then find every binary built. With the binaries cached the
# background build is a few version checks.
#
# The build is owned by this script: it is stopped when "$@" ends, however it
# ends (a half-built binary has no version stamp and is built again next time).
# Its output: _output/e2e-tools.log.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$ROOT/_output"
LOG=$ROOT/_output/e2e-tools.log
# A session of its own, so that stopping it stops the go builds under it.
setsid "$ROOT/e2e/build-tools.sh" all >"$LOG" 2>&1 </dev/null &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM
echo "e2e tools: building in the background (pid $pid, log $LOG)" >&2
"$@"

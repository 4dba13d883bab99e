#!/usr/bin/env bash
# The local tour: three managers on 127.0.0.1-3 as separate processes, then
# the leader is killed with SIGKILL and the cluster carries on.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shoal}
PORT=${DEMO_PORT:-4242}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shoal-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "== stopped every node; logs are in $WORK"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
cli() { "$BIN" "$@"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then echo "timed out waiting for $what" >&2; exit 1; fi
    sleep 0.1
  done
}

step "starting manager m1 on 127.0.0.1:$PORT (shoal init)"
"$BIN" init --data-dir "$WORK/m1" --advertise "127.0.0.1:$PORT" --hostname m1 >"$WORK/m1.out" 2>"$WORK/m1.log" &
pids+=($!)
wait_for 20 "m1" cli node ls --host "127.0.0.1:$PORT" --timeout 1s
TOKEN=$(cli cluster join-token -q manager --host "127.0.0.1:$PORT")
for i in 2 3; do
  step "joining manager m$i on 127.0.0.$i:$PORT (shoal join)"
  "$BIN" join --data-dir "$WORK/m$i" --advertise "127.0.0.$i:$PORT" --hostname "m$i" --token "$TOKEN" "127.0.0.1:$PORT" >"$WORK/m$i.out" 2>"$WORK/m$i.log" &
  pids+=($!)
  wait_for 20 "m$i" grep -q joined "$WORK/m$i.out"
done
wait_for 20 "three reachable managers" bash -c "[ \$('$BIN' node ls --host 127.0.0.1:$PORT | grep -cE 'Leader|Reachable') -eq 3 ]"

step "shoal node ls"
cli node ls --host "127.0.0.1:$PORT"
step "shoal cluster info"
cli cluster info --host "127.0.0.1:$PORT"

LEADER=$(cli node ls --host "127.0.0.1:$PORT" | awk '/Leader/ {print ($2=="*") ? $3 : $2}')
IDX=${LEADER#m}
step "killing the leader $LEADER (pid ${pids[$((IDX-1))]}) with SIGKILL"
OTHER=$(( IDX % 3 + 1 ))
start_ns=$(date +%s%N)
{ kill -9 "${pids[$((IDX-1))]}"; wait "${pids[$((IDX-1))]}"; } 2>/dev/null || true
wait_for 20 "a new leader" bash -c "'$BIN' node ls --host 127.0.0.$OTHER:$PORT --timeout 500ms | grep Leader | grep -qv ' $LEADER '"
echo "new leader after $(( ($(date +%s%N) - start_ns) / 1000000 )) ms"
cli node ls --host "127.0.0.$OTHER:$PORT"

step "writing through a surviving manager: shoal node update --label-add zone=a m$OTHER"
cli node update --label-add zone=a "m$OTHER" --host "127.0.0.$OTHER:$PORT"
cli node inspect --pretty "m$OTHER" --host "127.0.0.$OTHER:$PORT" | sed -n '/Labels/,/zone/p'

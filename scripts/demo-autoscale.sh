#!/bin/sh
# demo-autoscale: one manager and one worker on loopback, the hello app as
# an autoscaled service (2 to 6 tasks, CPU target 50% of a 0.1-CPU
# reservation, 2s sync, 15s scale-down window), a built-in load loop of
# four clients asking for 50ms of CPU per request, then no load: the
# service goes up to several replicas and back down to 2. Every process
# it starts is stopped at the end. Needs root (cgroups enforce the CPU
# limit) and bin/shoal and bin/hello (make build).
set -eu
BIN=${BIN:-bin}
LOAD_SECONDS=${LOAD_SECONDS:-40}
SHOAL=$(cd "$BIN" && pwd)/shoal
HELLO=$(cd "$BIN" && pwd)/hello
NET=${DEMO_NET:-127.0.93}
PORT=${DEMO_PORT:-6242}
PUBLISH=${DEMO_PUBLISH:-8093}
DIR=$(mktemp -d /tmp/shoal-demo-autoscale.XXXXXX)
S="$SHOAL --data-dir $DIR/m"
pids=""
cleanup() {
	rm -f "$DIR/load"
	$S service rm hot >/dev/null 2>&1 || true
	sleep 2
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	echo "== stopped; logs are in $DIR"
}
trap cleanup EXIT INT TERM

echo "== a manager and a worker on $NET.1 and $NET.2"
"$SHOAL" init --advertise "$NET.1:$PORT" --data-dir "$DIR/m" --gossip-fast >"$DIR/manager.log" 2>&1 &
pids="$pids $!"
until $S node ls >/dev/null 2>&1; do sleep 0.5; done
"$SHOAL" join --data-dir "$DIR/w" --advertise "$NET.2:$PORT" --gossip-fast \
	--token "$($S cluster join-token -q worker)" "$NET.1:$PORT" >"$DIR/worker.log" 2>&1 &
pids="$pids $!"
until [ "$($S node ls -q 2>/dev/null | wc -l)" -ge 2 ]; do sleep 0.5; done

echo "== hot: hello, autoscaled on CPU"
$S service create --name hot --publish "$PUBLISH:80" --reserve-cpu 0.1 --limit-cpu 0.1 \
	--autoscale-cpu 50% --autoscale-min 2 --autoscale-max 6 \
	--autoscale-sync 2s --autoscale-downscale-window 15s "$HELLO"

show() {
	printf '\n== %s, %ss: ' "$1" "$(( $(date +%s) - T0 ))"
	$S service ls | awk '$2 == "hot" { print $4 " replicas" }'
	$S service stats hot --no-stream
}
T0=$(date +%s)
echo "== load: 4 clients asking for /work?ms=50 for ${LOAD_SECONDS}s"
touch "$DIR/load"
for _ in 1 2 3 4; do
	(while [ -e "$DIR/load" ]; do curl -s -o /dev/null --max-time 10 "http://$NET.1:$PUBLISH/work?ms=50" || sleep 0.2; done) &
	pids="$pids $!"
done
while [ $(( $(date +%s) - T0 )) -lt "$LOAD_SECONDS" ]; do sleep 10; show "under load"; done
rm -f "$DIR/load"
echo "== load stopped"
until $S service ls | awk '$2 == "hot" { exit !($4 == "2/2") }'; do sleep 10; show "idle"; done
show "back to the minimum"
echo
$S events --since 10m --until 0s --filter service=hot | grep autoscale

#!/usr/bin/env bash
# load.sh: run mailguard on a throwaway config and measure both front ends
# with bin/mailguard-load. `make load` runs it.
#
#   STORE=memory|redis   store.backend (default memory, the embedded store)
#   REDIS_URL            with STORE=redis (default redis://127.0.0.1:6379/0);
#                        keys go under a prefix of their own, left to expire
#   DURATION=10s CONNS=32 POSTFIX_USERS=0 FAIL_RATIO=0.2
#   RATE=0               requests per second, open loop (0: as fast as answered)
#   LOG_LEVEL=info       the daemon's log.level (debug logs every request: it would dominate)
#
# Everything runs on this machine: the load tool shares the CPUs with the
# daemon, so the figures are a floor of what the daemon alone can do.
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
STORE=${STORE:-memory}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
POSTFIX_USERS=${POSTFIX_USERS:-0}
FAIL_RATIO=${FAIL_RATIO:-0.2}
RATE=${RATE:-0}
LOG_LEVEL=${LOG_LEVEL:-info}

case $STORE in
memory | redis) ;;
*) echo "load.sh: STORE must be memory or redis, not '$STORE'" >&2; exit 2 ;;
esac

echo "== build"
"$GO" build -trimpath -o bin/mailguard ./cmd/mailguard
"$GO" build -trimpath -o bin/mailguard-load ./cmd/mailguard-load

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mailguard-load.XXXXXX")
pid=
stop() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap stop EXIT
trap 'exit 130' INT TERM

# in_use PORT: something listens on 127.0.0.1:PORT (or on every address).
in_use() {
	if command -v ss >/dev/null; then
		[ -n "$(ss -Htln "( sport = :$1 )")" ]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}
chosen=" "
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 40000))
		if [[ $chosen != *" $p "* ]] && ! in_use "$p"; then
			chosen+="$p "
			echo "$p"
			return
		fi
	done
	echo "load.sh: no free port found" >&2
	return 1
}
pf_port=$(free_port)
dv_port=$(free_port)
key="load-$RANDOM$RANDOM"

cat >"$tmp/mailguard.yaml" <<EOF
state_dir: $tmp/state
postfix: {listen: "127.0.0.1:$pf_port"}
dovecot: {listen: "127.0.0.1:$dv_port", api_header: "Authorization: Bearer $key"}
admin: {socket: "$tmp/admin.sock"}
metrics: {listen: ""}
store:
  backend: $STORE
  redis: {url: "$REDIS_URL", prefix: "mailguard-load-$$:"}
log: {level: $LOG_LEVEL, format: text}
EOF

# MAILGUARD_* variables would override the file: the run must not depend on them.
for v in $(compgen -e); do
	if [[ $v == MAILGUARD_* ]]; then unset "$v"; fi
done

echo "== mailguard serve (store $STORE, postfix 127.0.0.1:$pf_port, dovecot 127.0.0.1:$dv_port, log level $LOG_LEVEL)"
bin/mailguard serve --config "$tmp/mailguard.yaml" 2>"$tmp/mailguard.log" &
pid=$!
up=
for _ in $(seq 100); do
	if ! kill -0 "$pid" 2>/dev/null; then break; fi
	if in_use "$pf_port" && in_use "$dv_port" && [ -S "$tmp/admin.sock" ]; then up=1; break; fi
	sleep 0.1
done
if [ -z "$up" ]; then
	echo "load.sh: mailguard did not start; its log:" >&2
	cat "$tmp/mailguard.log" >&2
	exit 1
fi

# CPU seconds (user+system) used so far by the daemon, and by the whole
# machine: what neither the daemon nor the load tool used was taken by
# something else, and makes the figures of that run worth less.
hz=$(getconf CLK_TCK)
daemon_cpu() { awk -v hz="$hz" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$pid/stat"; }
busy_cpu() { awk -v hz="$hz" '$1 == "cpu" { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }
TIMEFORMAT="%3U %3S"
exec 3>&1 4>&2
status=0
measure() {
	local name=$1 d0 b0 d1 b1 lt
	shift
	echo
	echo "== $name"
	d0=$(daemon_cpu) b0=$(busy_cpu)
	lt=$({ time bin/mailguard-load "$@" -conns "$CONNS" -duration "$DURATION" -rate "$RATE" >&3 2>&4; } 2>&1) || status=1
	d1=$(daemon_cpu) b1=$(busy_cpu)
	awk -v d="$(awk -v a="$d0" -v b="$d1" 'BEGIN { print b - a }')" -v b="$(awk -v a="$b0" -v b="$b1" 'BEGIN { print b - a }')" \
		-v lt="$lt" -v n="$(nproc)" 'BEGIN {
			split(lt, t, " "); l = t[1] + t[2]; o = b - d - l; if (o < 0) o = 0
			printf "cpu         daemon %.2fs, load tool %.2fs, other processes %.2fs (%d cores)\n", d, l, o, n
		}'
}
measure "postfix policy: $CONNS connections, $DURATION, users $POSTFIX_USERS" \
	-policy "127.0.0.1:$pf_port" -users "$POSTFIX_USERS"
measure "dovecot auth policy: $CONNS keep-alive connections, $DURATION, fail ratio $FAIL_RATIO" \
	-dovecot "http://127.0.0.1:$dv_port/" -api-header "Authorization: Bearer $key" -fail-ratio "$FAIL_RATIO"

echo
lines=$(wc -l <"$tmp/mailguard.log")
echo "== daemon log: $lines lines ($(grep -c 'msg=ban ' "$tmp/mailguard.log" || true) bans, $(grep -c 'msg=refused\|msg="policyd: refuse"' "$tmp/mailguard.log" || true) refusals, $(grep -c 'level=\(WARN\|ERROR\)' "$tmp/mailguard.log" || true) warnings or errors)"
grep 'level=\(WARN\|ERROR\)' "$tmp/mailguard.log" | head -5 || true
exit $status

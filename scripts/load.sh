#!/usr/bin/env bash
# load.sh: measure mailguard's two front ends against the floor, in one run.
# `make load` runs it.
#
# It starts `mailguard-load floor` (a server of both protocols that reads
# each request and answers DUNNO / {"status":0}, nothing else), then for each
# store runs mailguard serve on a throwaway config and drives the floor and
# mailguard alternately with the same load (bin/mailguard-load). With the
# Redis store it also runs redis-benchmark GET (unpipelined, CONNS clients)
# against the same Redis, just before and just after mailguard's Postfix load
# with the Redis store: the Redis floor is the mean of the two. It ends with
# a table of mailguard's throughput as a ratio of each floor.
#
#   STORES="memory redis"  the stores to measure (store.backend)
#   REDIS_URL            Redis for STORES=redis; unset: a throwaway redis-server
#                        on a free port (keys go under a prefix of their own,
#                        left to expire, on a Redis given here)
#   DURATION=5s CONNS=32 POSTFIX_USERS=0 FAIL_RATIO=0.2
#   CLIENTS=256          distinct client addresses (1 in 16 attacks in the Dovecot load)
#   RATE=0               requests per second, open loop (0: as fast as answered)
#   LOG_LEVEL=info       the daemon's log.level (debug logs every request: it would dominate)
#   PROFILE=DIR          turn on metrics.pprof and save a CPU profile (and
#                        the allocations) of the daemon under each load in DIR
#   TOTP=1               run the daemon with totp.enabled (nobody enrolled: the
#                        cost of the TOTP lookup in every after-auth allow)
#   AUDIT=off            run the daemon with audit.enabled: false (the audit
#                        trail's cost: compare with a run of the default, on)
#   RUNS=1               repeat the whole measurement; with more than one, it
#                        ends with the median and range of every summary row
#
# Everything runs on this machine: the load tool shares the CPUs with the
# daemon (and with Redis), so the figures are a floor of what the daemon alone
# can do. The ratios are what to compare across machines and changes.
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
STORES=${STORES:-${STORE:-memory redis}}
REDIS_URL=${REDIS_URL:-}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
POSTFIX_USERS=${POSTFIX_USERS:-0}
FAIL_RATIO=${FAIL_RATIO:-0.2}
CLIENTS=${CLIENTS:-256}
RATE=${RATE:-0}
LOG_LEVEL=${LOG_LEVEL:-info}
PROFILE=${PROFILE:-}
TOTP=${TOTP:-}
AUDIT=${AUDIT:-on}
RUNS=${RUNS:-1}
export PATH="$PATH:/usr/sbin:/sbin"

case $AUDIT in
on | off) ;;
*) echo "load.sh: AUDIT must be on or off, not '$AUDIT'" >&2; exit 2 ;;
esac
for s in $STORES; do
	case $s in
	memory | redis) ;;
	*) echo "load.sh: STORES must list memory and/or redis, not '$s'" >&2; exit 2 ;;
	esac
done
if ! [[ $RUNS =~ ^[0-9]+$ ]] || [ "$RUNS" -lt 1 ]; then
	echo "load.sh: RUNS must be a whole number of runs (1 or more), not '$RUNS'" >&2
	exit 2
fi
secs=${DURATION%s}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
	echo "load.sh: DURATION must be whole seconds (5s), not '$DURATION'" >&2
	exit 2
fi

echo "== build"
"$GO" build -trimpath -o bin/mailguard ./cmd/mailguard
"$GO" build -trimpath -o bin/mailguard-load ./cmd/mailguard-load

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mailguard-load.XXXXXX")
pids=()
# stop_pid PID: TERM, then KILL after 5 s.
stop_pid() {
	local p=$1
	if kill -0 "$p" 2>/dev/null; then
		kill -TERM "$p" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	fi
	wait "$p" 2>/dev/null || true
}
cleanup() {
	for p in "${pids[@]}"; do stop_pid "$p"; done
	rm -rf "$tmp"
}
trap cleanup EXIT
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
# Ports are chosen below the kernel's ephemeral range (ip_local_port_range),
# where the load tool's own outgoing connections take theirs: a port free
# when chosen could be taken by one before the daemon binds it.
eph=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$eph" -gt 12000 ] || eph=32768
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((10000 + RANDOM % (eph - 10000)))
		if [[ $chosen != *" $p "* ]] && ! in_use "$p"; then
			chosen+="$p "
			echo "$p"
			return
		fi
	done
	echo "load.sh: no free port found" >&2
	return 1
}
# wait_up PID WHAT PORT...: wait until PID listens on every PORT.
wait_up() {
	local p=$1 what=$2 ok
	shift 2
	for _ in $(seq 100); do
		kill -0 "$p" 2>/dev/null || break
		ok=1
		for port in "$@"; do in_use "$port" || ok=; done
		[ -n "$ok" ] && return 0
		sleep 0.1
	done
	echo "load.sh: $what did not start; its log:" >&2
	cat "$tmp/$what.log" >&2
	exit 1
}

# MAILGUARD_* variables would override the config file: the run must not depend on them.
for v in $(compgen -e); do
	if [[ $v == MAILGUARD_* ]]; then unset "$v"; fi
done

floor_pf=$(free_port)
floor_dv=$(free_port)
bin/mailguard-load floor -policy "127.0.0.1:$floor_pf" -dovecot "127.0.0.1:$floor_dv" -duration 1h >"$tmp/floor.log" 2>&1 &
floor_pid=$!
pids+=("$floor_pid")
wait_up "$floor_pid" floor "$floor_pf" "$floor_dv"
echo "== floor: postfix 127.0.0.1:$floor_pf, dovecot 127.0.0.1:$floor_dv (pid $floor_pid)"

redis_host= redis_port= redis_pass= redis_db=0 redis_pid=
if [[ " $STORES " == *" redis "* ]]; then
	if [ -z "$REDIS_URL" ]; then
		if ! command -v redis-server >/dev/null; then
			echo "load.sh: no redis-server and no REDIS_URL: skipping the Redis store" >&2
			STORES=${STORES//redis/}
		else
			redis_port=$(free_port)
			redis_host=127.0.0.1
			mkdir "$tmp/redis"
			redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$tmp/redis" --save "" --appendonly no \
				--logfile "$tmp/redis.log" &
			redis_pid=$!
			pids+=("$redis_pid")
			wait_up "$redis_pid" redis "$redis_port"
			REDIS_URL="redis://127.0.0.1:$redis_port/0"
			echo "== redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$redis_port (throwaway)"
		fi
	else
		if [[ $REDIS_URL =~ ^rediss?://(([^:@/]*)(:([^@/]*))?@)?([^:/]+)(:([0-9]+))?(/([0-9]+))?$ ]]; then
			redis_pass=${BASH_REMATCH[4]} redis_host=${BASH_REMATCH[5]} redis_port=${BASH_REMATCH[7]:-6379} redis_db=${BASH_REMATCH[9]:-0}
		else
			echo "load.sh: cannot read REDIS_URL (want redis://[user:password@]host:port[/db])" >&2
			exit 2
		fi
	fi
fi

# CPU seconds (user+system) used so far by a process, and by the whole
# machine: what neither the daemon nor the load tool used was taken by
# something else (Redis, other jobs), and makes the figures of that run worth less.
hz=$(getconf CLK_TCK)
proc_cpu() { awk -v hz="$hz" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
busy_cpu() { awk -v hz="$hz" '$1 == "cpu" { printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / hz }' /proc/stat; }
TIMEFORMAT="%3U %3S"
exec 3>&1 4>&2
status=0
declare -A rps
# measure KEY SERVER_PID NAME ARGS...: run the load tool, print its report and
# the CPU shares, and keep its throughput as rps[KEY].
measure() {
	local key=$1 spid=$2 name=$3 d0 b0 r0 d1 b1 r1 lt out
	shift 3
	echo
	echo "== $name"
	d0=$(proc_cpu "$spid") b0=$(busy_cpu) r0=$(proc_cpu "${redis_pid:-self}")
	out="$tmp/out.$key"
	lt=$({ time bin/mailguard-load "$@" -conns "$CONNS" -duration "$DURATION" -rate "$RATE" >"$out" 2>&4; } 2>&1) || status=1
	d1=$(proc_cpu "$spid") b1=$(busy_cpu) r1=$(proc_cpu "${redis_pid:-self}")
	cat "$out"
	rps[$key]=$(awk '$1 == "throughput" { print $2 }' "$out")
	awk -v d0="$d0" -v d1="$d1" -v b0="$b0" -v b1="$b1" -v r0="$r0" -v r1="$r1" -v redis="${redis_pid:+1}" \
		-v lt="$lt" -v n="$(nproc)" -v r="${rps[$key]:-0}" -v secs="$secs" 'BEGIN {
			d = d1 - d0; b = b1 - b0; rc = redis ? r1 - r0 : 0
			split(lt, t, " "); l = t[1] + t[2]; o = b - d - l - rc; if (o < 0) o = 0
			printf "cpu         server %.2fs (%.1f µs/request), load tool %.2fs", d, (r > 0 ? d / (r * secs) * 1e6 : 0), l
			if (redis) printf ", redis-server %.2fs", rc
			printf ", other processes %.2fs (%d cores)\n", o, n
		}'
}
# profile PORT NAME: a CPU profile of the daemon over most of DURATION, in the background.
profile() {
	[ -n "$PROFILE" ] || return 0
	local s=$((secs > 2 ? secs - 1 : 1))
	curl -sf -o "$PROFILE/$2.cpu.pprof" "http://127.0.0.1:$1/debug/pprof/profile?seconds=$s" &
	prof_pid=$!
}
profile_done() {
	[ -n "$PROFILE" ] || return 0
	wait "$prof_pid" || echo "load.sh: CPU profile $2 failed" >&2
	curl -sf -o "$PROFILE/$2.allocs.pprof" "http://127.0.0.1:$1/debug/pprof/allocs" || echo "load.sh: allocs profile $2 failed" >&2
}
[ -z "$PROFILE" ] || mkdir -p "$PROFILE"

key="load-$RANDOM$RANDOM"
run_store() {
	local st=$1 pf dv mp=0 dpid
	pf=$(free_port) dv=$(free_port)
	[ -z "$PROFILE" ] || mp=$(free_port)
	cat >"$tmp/mailguard-$st.yaml" <<EOF
state_dir: $tmp/state-$st
postfix: {listen: "127.0.0.1:$pf"}
dovecot: {listen: "127.0.0.1:$dv", api_header: "Authorization: Bearer $key"}
admin: {socket: "$tmp/admin-$st.sock"}
metrics: {listen: "$([ -z "$PROFILE" ] || echo "127.0.0.1:$mp")", pprof: $([ -n "$PROFILE" ] && echo true || echo false)}
store:
  backend: $st
  redis: {url: "$REDIS_URL", prefix: "mailguard-load-$$-$RANDOM:"}
log: {level: $LOG_LEVEL, format: text}
# The load's attackers are banned as they were before the blast-radius
# guard: the figures stay comparable (README, Benchmarks).
safety: {max_bans_per_minute: 0}
audit: {enabled: $([ "$AUDIT" = on ] && echo true || echo false)}
EOF
	if [ -n "$TOTP" ]; then
		printf 'totp: {enabled: true, url: "https://mail.example.org/totp", listen: "127.0.0.1:%s"}\n' "$(free_port)" >>"$tmp/mailguard-$st.yaml"
	fi
	echo
	echo "== mailguard serve (store $st, postfix 127.0.0.1:$pf, dovecot 127.0.0.1:$dv, log level $LOG_LEVEL, audit $AUDIT${TOTP:+, totp.enabled})"
	bin/mailguard serve --config "$tmp/mailguard-$st.yaml" 2>"$tmp/mailguard-$st.log" &
	dpid=$!
	pids+=("$dpid")
	wait_up "$dpid" "mailguard-$st" "$pf" "$dv"

	local pfargs=(-users "$POSTFIX_USERS" -clients "$CLIENTS")
	local dvargs=(-api-header "Authorization: Bearer $key" -fail-ratio "$FAIL_RATIO" -clients "$CLIENTS")
	measure "floor-postfix-$st" "$floor_pid" "floor, postfix policy: $CONNS connections, $DURATION, users $POSTFIX_USERS" \
		-policy "127.0.0.1:$floor_pf" "${pfargs[@]}"
	[ "$st" != redis ] || redis_bench before
	profile "$mp" "postfix-$st"
	measure "postfix-$st" "$dpid" "mailguard ($st store), postfix policy: $CONNS connections, $DURATION, users $POSTFIX_USERS" \
		-policy "127.0.0.1:$pf" "${pfargs[@]}"
	profile_done "$mp" "postfix-$st"
	[ "$st" != redis ] || redis_bench after
	measure "floor-dovecot-$st" "$floor_pid" "floor, dovecot auth policy: $CONNS keep-alive connections, $DURATION, fail ratio $FAIL_RATIO" \
		-dovecot "http://127.0.0.1:$floor_dv/" "${dvargs[@]}"
	profile "$mp" "dovecot-$st"
	measure "dovecot-$st" "$dpid" "mailguard ($st store), dovecot auth policy: $CONNS keep-alive connections, $DURATION, fail ratio $FAIL_RATIO" \
		-dovecot "http://127.0.0.1:$dv/" "${dvargs[@]}"
	profile_done "$mp" "dovecot-$st"

	stop_pid "$dpid"
	local log="$tmp/mailguard-$st.log"
	echo
	echo "== mailguard ($st store) log: $(wc -l <"$log") lines ($(grep -c 'msg=ban ' "$log" || true) bans, $(grep -c 'msg=refused\|msg="policyd: refuse"' "$log" || true) refusals, $(grep -c 'level=\(WARN\|ERROR\)' "$log" || true) warnings or errors)"
	grep 'level=\(WARN\|ERROR\)' "$log" | head -5 || true
}

# redis_bench WHEN: redis-benchmark GET against the store's Redis, kept as
# rps[redis-get-WHEN]. It runs just before and just after mailguard's
# Postfix load on the Redis store, and the Redis floor is the mean of the
# two: the machine's speed drifts by tens of per cent within a minute (a
# shared VM), and a floor measured on one side only carried that drift into
# the ratio.
redis_bench() {
	local when=$1
	echo
	echo "== redis-benchmark GET, unpipelined, $CONNS clients, $redis_host:$redis_port (the Redis floor, $when)"
	if ! command -v redis-benchmark >/dev/null; then
		echo "load.sh: no redis-benchmark: no Redis floor" >&2
		return
	fi
	local n auth=()
	# About DURATION's worth at the floor's pace (Redis answers ~50,000 GET/s on 2 cores).
	n=$((secs * 50000))
	[ -z "$redis_pass" ] || auth=(-a "$redis_pass" --no-auth-warning)
	rps[redis-get-$when]=$(redis-benchmark -h "$redis_host" -p "$redis_port" "${auth[@]}" --dbnum "$redis_db" \
		-c "$CONNS" -P 1 -n "$n" -t get --csv | awk -F'"' '$2 == "GET" { printf "%.0f", $4 }')
	echo "throughput  ${rps[redis-get-$when]:-?} GET/s ($n requests)"
	if [ "$when" = after ] && [ -n "${rps[redis-get-before]:-}" ] && [ -n "${rps[redis-get-after]:-}" ]; then
		rps[redis-get]=$(((rps[redis-get-before] + rps[redis-get-after]) / 2))
	fi
}

ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "-" }'; }
# row FRONTEND STORE MAILGUARD FLOOR [NOTE]: print a summary row, and keep it
# for the summary over all runs.
row() {
	local r note=${5:-}
	r=$(ratio "$3" "$4")
	printf "%-10s %-8s %10s %10s %6s%s\n" "$1" "$2" "${3:-?}" "${4:-?}" "$r" "${note:+   ($note)}"
	printf "%s|%s|%s|%s|%s|%s\n" "$1" "$2" "$3" "$4" "$r" "${note%%;*}" >>"$tmp/rows"
}
# summary: mailguard's throughput as a ratio of each floor, for this run.
summary() {
	echo
	echo "== summary: throughput (req/s), mailguard as a ratio of the floor measured just before it"
	printf "%-10s %-8s %10s %10s %6s\n" "front end" store mailguard floor ratio
	for st in $STORES; do
		for fe in postfix dovecot; do
			row "$fe" "$st" "${rps[$fe-$st]:-}" "${rps[floor-$fe-$st]:-}"
		done
		if [ "$st" = redis ]; then
			row postfix redis "${rps[postfix-redis]:-}" "${rps[redis-get]:-}" \
				"floor: redis-benchmark GET, same Redis, $CONNS clients; mean of ${rps[redis-get-before]:-?} before and ${rps[redis-get-after]:-?} after"
		fi
	done
	if [[ " $STORES " == *" memory "* && " $STORES " == *" redis "* ]]; then
		# The Redis hop's own cost: the same front end and load on the embedded
		# store is the floor (one run apart, so the machine's drift counts too).
		for fe in postfix dovecot; do
			row "$fe" redis "${rps[$fe-redis]:-}" "${rps[$fe-memory]:-}" "floor: the same front end on the embedded store"
		done
	fi
	echo "(the machine's other load during the run shows in each 'cpu' line: other processes)"
}

for run in $(seq "$RUNS"); do
	[ "$RUNS" -eq 1 ] || { echo; echo "==== run $run of $RUNS"; }
	rps=()
	for st in $STORES; do
		run_store "$st"
	done
	summary
done

# Over several runs: the median of each row (a single run moves with the
# machine's speed; the median of a few is what to compare).
if [ "$RUNS" -gt 1 ]; then
	echo
	echo "== over $RUNS runs: median (and range) of each row"
	printf "%-10s %-8s %10s %10s %6s  %-11s\n" "front end" store mailguard floor ratio range
	awk -F'|' '
		# sorted(list, a): split list into a, sorted as numbers (mawk has no asort); returns the count.
		function sorted(list, a,   n, i, j, v) {
			n = split(list, a, " ")
			for (i = 2; i <= n; i++) { v = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
			return n
		}
		function median(list,   a, n) { n = sorted(list, a); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
		function lo(list,   a) { sorted(list, a); return a[1] }
		function hi(list,   a, n) { n = sorted(list, a); return a[n] }
		{
			k = $1 "|" $2 "|" $6
			if (!(k in seen)) { seen[k] = 1; order[++n] = k }
			if ($3 != "") mg[k] = mg[k] " " $3
			if ($4 != "") fl[k] = fl[k] " " $4
			if ($5 != "-") r[k] = r[k] " " $5
		}
		END {
			for (i = 1; i <= n; i++) {
				k = order[i]; split(k, f, "|")
				printf "%-10s %-8s %10.0f %10.0f %6s  %-11s%s\n", f[1], f[2], median(mg[k]), median(fl[k]),
					r[k] == "" ? "-" : sprintf("%.2f", median(r[k])),
					r[k] == "" ? "" : sprintf("%.2f-%.2f", lo(r[k]), hi(r[k])), f[3] == "" ? "" : "   (" f[3] ")"
			}
		}' "$tmp/rows"
fi
exit $status

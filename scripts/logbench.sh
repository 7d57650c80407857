#!/bin/sh
# logbench.sh: mailguard test-filter against Debian's fail2ban-regex on the
# same generated 200,000-line mail log with the same filter file (the
# shipped postfix.conf), one run each, lines/s side by side. Called by
# `make bench`. Installs the fail2ban package when it is missing and we are
# root (apt-get); otherwise it measures mailguard alone and says so.
#
#   LOGBENCH_LINES  lines to generate (200000)
#   LOGBENCH_MODE   filter mode (normal)
#   LOGBENCH_LOG    where to write the log (a temporary file)
set -eu

LINES=${LOGBENCH_LINES:-200000}
MODE=${LOGBENCH_MODE:-normal}
cd "$(dirname "$0")/.."
FILTER=logwatch/filter/filters/postfix.conf
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
LOG=${LOGBENCH_LOG:-$tmp/mail.log}

# The log: what a busy Postfix (with postscreen) and Dovecot write, in
# fixed proportions and a fixed order (the same log every run): deliveries,
# connects and disconnects, postscreen, TLS, and about one line in eight a
# failure (unknown users, relay probes, SASL failures, lost connections,
# pipelining, too many errors).
awk -v n="$LINES" 'BEGIN {
  srand(42)
  for (i = 0; i < n; i++) {
    s = int(i / 20); h = int(s / 3600) % 24; m = int(s / 60) % 60; sec = s % 60
    ts = sprintf("Nov 29 %02d:%02d:%02d mx", h, m, sec)
    pid = 10000 + (i % 97)
    ip = sprintf("%d.%d.%d.%d", 11 + (i * 7) % 200, (i * 13) % 256, (i * 17) % 256, 1 + (i * 19) % 254)
    qid = sprintf("%X", 1048576 + i * 7919)
    k = i % 40
    if (k == 0)       printf "%s postfix/smtpd[%d]: NOQUEUE: reject: RCPT from unknown[%s]: 550 5.1.1 <user%d@example.org>: Recipient address rejected: User unknown in local recipient table; from=<a@example.net> to=<user%d@example.org> proto=ESMTP helo=<client.example.net>\n", ts, pid, ip, i, i
    else if (k == 1)  printf "%s postfix/smtpd[%d]: NOQUEUE: reject: RCPT from unknown[%s]: 454 4.7.1 <x%d@elsewhere.example.com>: Relay access denied; from=<a@example.net> to=<x%d@elsewhere.example.com> proto=ESMTP helo=<client.example.net>\n", ts, pid, ip, i, i
    else if (k == 2)  printf "%s postfix/submission/smtpd[%d]: warning: unknown[%s]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username=user%d@example.org\n", ts, pid, ip, i
    else if (k == 3)  printf "%s postfix/smtpd[%d]: lost connection after AUTH from unknown[%s]\n", ts, pid, ip
    else if (k == 4)  printf "%s postfix/smtpd[%d]: improper command pipelining after CONNECT from unknown[%s]: EHLO x\\r\\nMAIL FROM:<a@b>\\r\\n\n", ts, pid, ip
    else if (k == 5)  printf "%s postfix/smtpd[%d]: too many errors after RCPT from unknown[%s]\n", ts, pid, ip
    else if (k < 12)  printf "%s postfix/smtpd[%d]: connect from mail%d.example.net[%s]\n", ts, pid, i % 500, ip
    else if (k < 18)  printf "%s postfix/smtpd[%d]: disconnect from mail%d.example.net[%s] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5\n", ts, pid, i % 500, ip
    else if (k < 22)  printf "%s postfix/smtpd[%d]: %s: client=mail%d.example.net[%s]\n", ts, pid, qid, i % 500, ip
    else if (k < 25)  printf "%s postfix/cleanup[%d]: %s: message-id=<%d.%d@example.net>\n", ts, pid + 1, qid, i, pid
    else if (k < 28)  printf "%s postfix/qmgr[1234]: %s: from=<sender%d@example.net>, size=%d, nrcpt=1 (queue active)\n", ts, qid, i % 300, 1000 + i % 50000
    else if (k < 31)  printf "%s postfix/local[%d]: %s: to=<user%d@example.org>, relay=local, delay=0.05, delays=0.02/0.01/0/0.02, dsn=2.0.0, status=sent (delivered to mailbox)\n", ts, pid + 2, qid, i % 300
    else if (k < 33)  printf "%s postfix/qmgr[1234]: %s: removed\n", ts, qid
    else if (k < 35)  printf "%s postfix/postscreen[%d]: CONNECT from [%s]:%d to [192.0.2.1]:25\n", ts, pid, ip, 1024 + i % 60000
    else if (k == 35) printf "%s postfix/postscreen[%d]: PASS OLD [%s]:%d\n", ts, pid, ip, 1024 + i % 60000
    else if (k == 36) printf "%s postfix/smtpd[%d]: Anonymous TLS connection established from mail%d.example.net[%s]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\n", ts, pid, i % 500, ip
    else if (k == 37) printf "%s dovecot: imap-login: Login: user=<user%d@example.org>, method=PLAIN, rip=%s, lip=192.0.2.1, mpid=%d, TLS, session=<abc%d>\n", ts, i % 300, ip, pid, i
    else if (k == 38) printf "%s postfix/anvil[1236]: statistics: max connection rate 3/60s for (smtp:%s) at Nov 29 %02d:%02d:%02d\n", ts, ip, h, m, sec
    else              printf "%s postfix/smtp[%d]: %s: to=<r%d@example.com>, relay=mx.example.com[%s]:25, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as ABC%d)\n", ts, pid, qid, i, ip, i
  }
}' > "$LOG"

go build -trimpath -o "$tmp/mailguard" ./cmd/mailguard

n=$(wc -l < "$LOG")
echo "logbench: $n lines, filter $FILTER, mode $MODE, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# run NAME CMD...: runs CMD once under /usr/bin/time; sets out, cpu (user +
# system seconds of the whole process, start-up included).
run() {
  name=$1; shift
  if [ -x /usr/bin/time ]; then
    out=$(/usr/bin/time -o "$tmp/time" -f '%U %S' "$@")
    cpu=$(awk '{print $1 + $2}' "$tmp/time")
  else
    out=$("$@"); cpu=
  fi
}
rate() { if [ -n "$2" ] && [ "$(echo "$2 > 0" | bc)" = 1 ]; then echo "$1 / $2" | bc; else echo -; fi; }
row() { printf '%-22s %8s %10s %8s %12s   %s\n' "$@"; }

run mailguard "$tmp/mailguard" test-filter "$LOG" "$FILTER" --mode "$MODE" --missed 0
mg_summary=$(printf '%s\n' "$out" | grep '^Lines:')
mg_sec=$(printf '%s\n' "$out" | sed -n 's/.*processed in \([0-9.]*\) sec.*/\1/p')
mg_rate=$(printf '%s\n' "$out" | sed -n 's/.*processed in [0-9.]* sec, \([0-9]*\) lines\/s.*/\1/p')
mg_cpu=$cpu

if ! command -v fail2ban-regex >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "logbench: installing Debian's fail2ban (for fail2ban-regex)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fail2ban >/dev/null
  fi
fi
row tool seconds lines/s cpu-s lines/cpu-s summary
row "mailguard test-filter" "$mg_sec" "$mg_rate" "${mg_cpu:--}" "$(rate "$n" "$mg_cpu")" "$mg_summary"
if ! command -v fail2ban-regex >/dev/null 2>&1; then
  echo "logbench: fail2ban-regex not available (not root, or no apt-get): nothing to compare with"
  exit 0
fi
run fail2ban fail2ban-regex "$LOG" "$FILTER[mode=$MODE]"
f2b_summary=$(printf '%s\n' "$out" | grep '^Lines:')
f2b_sec=$(printf '%s\n' "$out" | sed -n 's/^\[processed in \([0-9.]*\) sec\]/\1/p')
f2b_rate=$(rate "$n" "$f2b_sec")
f2b_cpu=$cpu
row "fail2ban-regex" "$f2b_sec" "$f2b_rate" "${f2b_cpu:--}" "$(rate "$n" "$f2b_cpu")" "$f2b_summary"
echo "logbench: mailguard reads $(echo "scale=1; $mg_rate / $f2b_rate" | bc)x as many lines/s as fail2ban-regex$( [ -n "$mg_cpu" ] && echo ", $(echo "scale=1; $f2b_cpu / $mg_cpu" | bc)x per CPU second")"
if [ "$mg_summary" = "$f2b_summary" ]; then
  echo "logbench: counts equal"
else
  echo "logbench: COUNTS DIFFER" >&2
  exit 1
fi

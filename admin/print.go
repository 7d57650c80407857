package admin

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// PrintStatus writes jails the way fail2ban-client status does, so that
// admins (and their scripts) find what they know.
func PrintStatus(w io.Writer, jails []JailStatus, now time.Time) {
	if len(jails) > 1 {
		names := make([]string, len(jails))
		for i, j := range jails {
			names[i] = j.Name
		}
		fmt.Fprintf(w, "Status\n|- Number of jail:\t%d\n`- Jail list:\t%s\n\n", len(jails), strings.Join(names, ", "))
	}
	for _, j := range jails {
		fmt.Fprintf(w, "Status for the jail: %s\n", j.Name)
		fmt.Fprintf(w, "|- Settings:\tkey %s, maxretry %d, findtime %s, bantime %s, action %s", j.Key, j.MaxRetry, j.FindTime, j.BanTime, j.Action)
		if len(j.Protocols) > 0 {
			fmt.Fprintf(w, ", protocols %s", strings.Join(j.Protocols, ","))
		}
		fmt.Fprintf(w, "\n|- Filter\n|  |- Currently failed:\t%d\n|  |- Total failed:\t%d\n", j.Failing, j.TotalFailed)
		fmt.Fprintf(w, "|  `- By protocol:\t%s\n", byProtocol(j.ByProtocol))
		fmt.Fprintf(w, "`- Actions\n   |- Currently banned:\t%d\n   |- Total banned:\t%d\n   `- Banned IP list:\t", len(j.Banned), j.TotalBanned)
		var list []string
		for _, b := range j.Banned {
			list = append(list, Target(b.Subject))
		}
		fmt.Fprintln(w, strings.Join(list, " "))
		for _, b := range j.Banned {
			fmt.Fprintf(w, "      %s\t%s left (ban #%d, %s)\n", Target(b.Subject), b.Expires.Sub(now).Round(time.Second), b.Nth, b.Reason)
		}
		fmt.Fprintln(w)
	}
}

// Target turns a ban subject into what an admin types: 192.0.2.7,
// 2001:db8::/64, alice@example.org.
func Target(subject string) string {
	for _, p := range []string{"net:", "user:", "user+net:"} {
		if rest, ok := strings.CutPrefix(subject, p); ok {
			if p == "net:" {
				if host, ok := strings.CutSuffix(rest, "/32"); ok && !strings.Contains(host, ":") {
					return host
				}
				if host, ok := strings.CutSuffix(rest, "/128"); ok {
					return host
				}
			}
			if p == "user+net:" {
				return strings.Replace(rest, "|", " from ", 1)
			}
			return rest
		}
	}
	return subject
}

// byProtocol prints "imap 12, smtp 3 (this node)" in name order.
func byProtocol(m map[string]int64) string {
	if len(m) == 0 {
		return "-"
	}
	names := make([]string, 0, len(m))
	for p := range m {
		names = append(names, p)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, p := range names {
		parts[i] = fmt.Sprintf("%s %d", p, m[p])
	}
	return strings.Join(parts, ", ") + " (this node, since start)"
}

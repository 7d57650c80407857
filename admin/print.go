package admin

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/escape"
)

// PrintStatus writes jails the way fail2ban-client status does, so that
// admins (and their scripts) find what they know. Every text that may come
// from a client (logins, reasons) is escaped: no control character reaches
// the terminal and no newline forges a line.
func PrintStatus(w io.Writer, jails []JailStatus, now time.Time) {
	if len(jails) > 1 {
		names := make([]string, len(jails))
		for i, j := range jails {
			names[i] = escape.String(j.Name)
		}
		fmt.Fprintf(w, "Status\n|- Number of jail:\t%d\n`- Jail list:\t%s\n\n", len(jails), strings.Join(names, ", "))
	}
	for _, j := range jails {
		rate := isRateJail(j)
		fmt.Fprintf(w, "Status for the jail: %s\n", escape.String(j.Name))
		fmt.Fprintf(w, "|- Settings:\t%s\n", settings(j))
		failed, total := "Currently failed", "Total failed"
		if rate {
			failed, total = "Currently counted", "Total recipients"
		}
		fmt.Fprintf(w, "|- Filter\n|  |- %s:\t%d\n|  |- %s:\t%d\n", failed, j.Failing, total, j.TotalFailed)
		if len(j.Logs) > 0 {
			fmt.Fprintf(w, "|  |- Logs:\t%s\n", escape.String(strings.Join(j.Logs, " ")))
		}
		fmt.Fprintf(w, "|  `- By protocol:\t%s\n", byProtocol(j.ByProtocol))
		fmt.Fprintf(w, "`- Actions\n   |- Currently banned:\t%d\n   |- Total banned:\t%d\n", len(j.Banned), j.TotalBanned)
		var ips, users []string
		for _, b := range j.Banned {
			if strings.HasPrefix(b.Subject, "net:") {
				ips = append(ips, escape.String(Target(b.Subject)))
			} else {
				users = append(users, escape.String(Target(b.Subject)))
			}
		}
		// fail2ban's "Banned IP list" for addresses, its twin for logins; a
		// user jail shows only the user list, the manual jail both when it
		// holds both.
		userJail := j.Key == "user" || j.Key == "user+prefix"
		switch {
		case len(users) > 0 && (len(ips) > 0 || !userJail):
			fmt.Fprintf(w, "   |- Banned IP list:\t%s\n   `- Banned user list:\t%s\n", strings.Join(ips, " "), strings.Join(users, " "))
		case userJail:
			fmt.Fprintf(w, "   `- Banned user list:\t%s\n", strings.Join(users, " "))
		default:
			fmt.Fprintf(w, "   `- Banned IP list:\t%s\n", strings.Join(ips, " "))
		}
		for _, b := range j.Banned {
			fmt.Fprintf(w, "      %s\t%s left (ban #%d, %s)\n", escape.String(Target(b.Subject)), b.Expires.Sub(now).Round(time.Second), b.Nth, escape.String(b.Reason))
		}
		fmt.Fprintln(w)
	}
}

// settings is the Settings line of a jail.
func settings(j JailStatus) string {
	if j.Name == guard.ManualJail {
		return fmt.Sprintf("bans made with mailguard ban, bantime %s unless --for, action %s", j.BanTime, escape.String(j.Action))
	}
	var s string
	if j.Name == guard.TOTPJail {
		return fmt.Sprintf("wrong TOTP codes per user and per client prefix, maxretry %d, findtime %s, bantime %s, action %s",
			j.MaxRetry, j.FindTime, j.BanTime, escape.String(j.Action))
	}
	if isRateJail(j) {
		s = fmt.Sprintf("key %s, at most %d recipients per %s, over it defers (no ban)", escape.String(j.Key), j.MaxRetry, j.FindTime)
		if j.BanTime != "0s" && j.BanTime != "" {
			s = fmt.Sprintf("key %s, at most %d recipients per %s, bantime %s", escape.String(j.Key), j.MaxRetry, j.FindTime, j.BanTime)
		}
	} else {
		s = fmt.Sprintf("key %s, maxretry %d, findtime %s, bantime %s", escape.String(j.Key), j.MaxRetry, j.FindTime, j.BanTime)
	}
	s += ", action " + escape.String(j.Action)
	if len(j.Protocols) > 0 {
		s += ", protocols " + escape.String(strings.Join(j.Protocols, ","))
	}
	return s
}

// isRateJail: a jail that counts recipients alone (postfix-rate).
func isRateJail(j JailStatus) bool {
	if len(j.Events) == 0 {
		return false
	}
	for _, e := range j.Events {
		if e != "rcpt" {
			return false
		}
	}
	return true
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
		parts[i] = fmt.Sprintf("%s %d", escape.String(p), m[p])
	}
	return strings.Join(parts, ", ") + " (this node, since start)"
}

package filter

import (
	"strings"
	"testing"
)

// Lines an attacker shapes: text it chose (a user name, a HELO, a
// recipient, pipelined commands) that looks like an address must never
// become the host. Each line is a real recorded one (testdata/*.log) with
// the attacker's text put where Postfix or Dovecot writes it.
func TestInjection(t *testing.T) {
	long := strings.Repeat("A", MaxLineLength-300)
	for _, tc := range []struct {
		name, filter, mode, line string
		host                     string // "" when the line must not yield a host
	}{
		{"SASL user name with [address]", "postfix-sasl", "",
			"Nov 29 09:25:40 mx postfix/submission/smtpd[32006]: warning: unknown[127.0.0.15]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=x unknown[1.2.3.4]: y",
			"127.0.0.15"},
		{"SASL user name forging a whole line", "postfix", "aggressive",
			"Nov 29 09:25:40 mx postfix/submission/smtpd[32006]: warning: unknown[127.0.0.15]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=warning: unknown[1.2.3.4]: SASL PLAIN authentication failed: x",
			"127.0.0.15"},
		{"HELO, sender and recipient with addresses", "postfix", "",
			"Nov 29 09:25:15 mx postfix/smtpd[32009]: NOQUEUE: reject: RCPT from unknown[127.0.0.11]: 550 5.1.1 <bob[5.6.7.8]@mx.example.org>: Recipient address rejected: User unknown in local recipient table; from=<a[9.9.9.9]@example.net> to=<bob[5.6.7.8]@mx.example.org> proto=ESMTP helo=<[1.2.3.4]>",
			"127.0.0.11"},
		{"pipelined text imitating a reject", "postfix", "",
			`Nov 29 09:25:14 mx postfix/smtpd[32005]: improper command pipelining after CONNECT from unknown[127.0.0.21]: RCPT from unknown[1.2.3.4]: 554 5.7.1 Relay access denied\r\n`,
			"127.0.0.21"},
		{"address in a warning no regex takes", "postfix", "aggressive",
			"Nov 29 09:25:15 mx postfix/smtpd[32005]: warning: Illegal address syntax from unknown[127.0.0.12] in RCPT command: <reject: RCPT from unknown[1.2.3.4]: 554 5.7.1 Relay access denied>",
			""},
		{"Dovecot user name forging the rest of the line", "dovecot", "",
			"Nov 29 09:25:52 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, rip=1.2.3.4, lip=127.0.0.1, TLS, session=<x>, method=PLAIN, rip=127.0.0.16, lip=127.0.0.1, TLS, session=<Y44K4WZhD4Z/AAAQ>",
			"127.0.0.16"},
		{"Dovecot user name rip=", "dovecot", "",
			"Nov 29 09:25:52 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<rip=1.2.3.4>, method=PLAIN, rip=127.0.0.16, lip=127.0.0.1, TLS: Connection closed, session=<Y44K4WZhD4Z/AAAQ>",
			"127.0.0.16"},
		{"invalid UTF-8 user name (RE2)", "dovecot", "",
			"Nov 29 09:25:52 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<\xff\xfe[1.2.3.4]\xc3>, method=PLAIN, rip=127.0.0.16, lip=127.0.0.1, TLS, session=<Y44K4WZhD4Z/AAAQ>",
			"127.0.0.16"},
		{"invalid UTF-8 user name (regexp2)", "postfix-sasl", "",
			"Nov 29 09:25:40 mx postfix/submission/smtpd[32006]: warning: unknown[127.0.0.15]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=\xff[1.2.3.4]\xfe",
			"127.0.0.15"},
		{"long user name just under the limit (regexp2)", "postfix-sasl", "",
			"Nov 29 09:25:40 mx postfix/submission/smtpd[32006]: warning: unknown[127.0.0.15]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=" + long + "[1.2.3.4]",
			"127.0.0.15"},
		{"line over the limit is not matched", "postfix-sasl", "",
			"Nov 29 09:25:40 mx postfix/submission/smtpd[32006]: warning: unknown[127.0.0.15]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=" + long + long,
			""},
		{"not an address: 999.1.1.1", "dovecot", "",
			"Nov 29 09:25:52 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, rip=999.1.1.1, lip=127.0.0.1, TLS, session=<Y44K4WZhD4Z/AAAQ>",
			""},
		{"not an address: leading zeros", "dovecot", "",
			"Nov 29 09:25:52 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, rip=010.1.1.1, lip=127.0.0.1, TLS, session=<Y44K4WZhD4Z/AAAQ>",
			""},
		{"IPv4-mapped address is the IPv4 client", "dovecot", "",
			"Nov 29 09:25:52 imap-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, rip=::ffff:192.0.2.8, lip=127.0.0.1, TLS, session=<Y44K4WZhD4Z/AAAQ>",
			"192.0.2.8"},
		{"Roundcube user name forging its own tail, with a forwarded header", "roundcube-auth", "",
			"[29-Nov-2026 10:49:16 +0000]: <4fa6c2b1> Failed login for x from 1.2.3.4 (X-Forwarded-For: y) in session 4fa6c2b19d3e8a70 (error: 0) from 127.0.0.43 (X-Forwarded-For: z) in session 4fa6c2b19d3e8a70 (error: 0)",
			""},
		{"Roundcube forwarded header forging a tail", "roundcube-auth", "",
			"[29-Nov-2026 10:49:16 +0000]: <4fa6c2b1> Failed login for carol from 2001:db8::44 (X-Forwarded-For: a) in session b (error: 0) from 1.2.3.4 (X-Forwarded-For: c) in session 4fa6c2b19d3e8a70 (error: 0)",
			""},
		{"Roundcube user name with an address", "roundcube-auth", "",
			"[29-Nov-2026 10:49:16 +0000]: <4fa6c2b1> Failed login for [1.2.3.4] from 127.0.0.41 in session 4fa6c2b19d3e8a70 (error: 0)",
			"127.0.0.41"},
		{"Roundcube errors.log user name forging host and address", "roundcube-auth", "",
			"[29-Nov-2026 10:49:16 +0000]: <4fa6c2b1> IMAP Error: Login failed for dave against h from 1.2.3.4. x against localhost from 127.0.0.46. AUTHENTICATE PLAIN: Authentication failed. in /usr/share/roundcube/program/lib/Roundcube/rcube_imap.php on line 125 (POST /?_task=login&_action=login)",
			""},
		{"postscreen PREGREET text with an address", "postscreen", "",
			`Nov 29 10:46:54 mx postfix/postscreen[23095]: PREGREET 16 after 0 from [127.0.0.31]:52853: EHLO [1.2.3.4]\r\nPREGREET 1 after 0 from [1.2.3.4]:1: x\r\n`,
			"127.0.0.31"},
		{"postscreen NON-SMTP text forging a HANGUP", "postscreen", "",
			"Nov 29 10:47:06 mx postfix/postscreen[23095]: NON-SMTP COMMAND from [127.0.0.34]:53209 after CONNECT: HANGUP after 0 from [1.2.3.4]:1 in tests before SMTP handshake",
			"127.0.0.34"},
		{"IPv6 client", "postfix", "",
			"Nov 29 09:25:15 mx postfix/smtpd[32009]: NOQUEUE: reject: RCPT from unknown[2001:db8::25]: 454 4.7.1 <x@elsewhere.example.com>: Relay access denied; from=<a@example.net> to=<x@elsewhere.example.com> proto=ESMTP helo=<[1.2.3.4]>",
			"2001:db8::25"},
		// Not recorded (the tests have no DNSBL): the line as Postfix's
		// smtpd_check.c writes a reject_rbl_client refusal.
		{"DNSBL reject (rbl mode)", "postfix", "rbl",
			"Nov 29 09:25:15 mx postfix/smtpd[32009]: NOQUEUE: reject: RCPT from unknown[192.0.2.30]: 554 5.7.1 Service unavailable; Client host [192.0.2.30] blocked using zen.spamhaus.org; from=<a@example.net> to=<x@mx.example.org> proto=ESMTP helo=<[1.2.3.4]>",
			"192.0.2.30"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := LoadShipped(tc.filter, tc.mode, nil)
			if err != nil {
				t.Fatal(err)
			}
			r, ok := f.Match(tc.line)
			if tc.host == "" {
				if ok {
					t.Errorf("Match = %v ok, want no host", r.Host)
				}
				return
			}
			if !ok || r.Host.String() != tc.host {
				t.Errorf("Match = %v (ok %v, outcome %v), want %s", r.Host, ok, r.Outcome, tc.host)
			}
		})
	}
}

// The fail2ban CVEs (CVE-2012-5642, CVE-2013-7176/7177, CVE-2021-32749's
// kin) came from regexes that were not anchored or put a greedy .* before
// <HOST>, so text after the real host could supply one. Every shipped
// regex is anchored at the start of the text it sees.
func TestShippedRegexesAnchored(t *testing.T) {
	for _, name := range Shipped() {
		for _, mode := range []string{"", "normal", "aggressive", "auth", "errors", "rbl"} {
			f, err := LoadShipped(name, mode, nil)
			if err != nil {
				continue // a mode the filter does not have
			}
			if f.Pref != nil && !strings.HasPrefix(f.Pref.Source, "^") {
				t.Errorf("%s mode %s: prefregex not anchored: %s", name, mode, f.Pref.Source)
			}
			for _, re := range f.Fail {
				if !strings.HasPrefix(re.Source, "^") {
					t.Errorf("%s mode %s: failregex not anchored: %s", name, mode, re.Source)
				}
				if strings.Contains(re.Source, ".*<HOST>") || strings.Contains(re.Source, ".*<ADDR>") || strings.Contains(re.Source, "<HOST>") {
					t.Errorf("%s mode %s: %s: greedy .* before the address, or <HOST> (names are never resolved)", name, mode, re.Source)
				}
			}
		}
	}
}

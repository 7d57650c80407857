package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/admin"
	"github.com/mailguard/mailguard/internal/config"
)

// finding is one thing doctor reports: what is wrong and how to fix it.
// A note (problem false) informs and does not fail the check.
type finding struct {
	area, what, fix string
	problem         bool
}

func (f finding) String() string {
	tag := "FAIL"
	if !f.problem {
		tag = "note"
	}
	s := tag + " " + f.area + ": " + f.what
	if f.fix != "" {
		s += ". Fix: " + f.fix
	}
	return cleanLine(s)
}

// cleanLine keeps one line of printable text (values come from config files).
func cleanLine(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

type doctorFlags struct {
	postfixDir  string
	dovecotConf string
}

func doctorCmd(g *globals) *cobra.Command {
	var f doctorFlags
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "check how Postfix, Dovecot and mailguard are wired, and say how to fix what is wrong",
		Long: `doctor reads the running Postfix (postconf) and Dovecot (doveconf) configuration
and mailguard's, asks the daemon on its admin socket and both policy listeners,
and prints one line per problem with its fix. It exits 0 only when all is well.`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load()
			if err != nil {
				return err
			}
			if g.socket != "" {
				c.Admin.Socket = g.socket
			}
			fs := diagnose(cmd.Context(), c, f)
			out := cmd.OutOrStdout()
			n := 0
			for _, x := range fs {
				fmt.Fprintln(out, x)
				if x.problem {
					n++
				}
			}
			if n > 0 {
				return &exitError{exitRefused, fmt.Errorf("doctor: %d problem(s) found", n)}
			}
			fmt.Fprintln(out, "ok: Postfix and Dovecot ask mailguard as they should, and mailguard answers")
			return nil
		},
	}
	cmd.Flags().StringVar(&f.postfixDir, "postfix-config", defaultPostfixDir, "Postfix config_directory (postconf -c DIR)")
	cmd.Flags().StringVar(&f.dovecotConf, "dovecot-config", defaultDovecotConf, "Dovecot's main config file (doveconf -c FILE)")
	return cmd
}

// postfixSASLBudget is how long Dovecot may take over one SMTP AUTH: Postfix
// gives up after about 10 s (454 4.7.0 instead of 535), so keep a margin.
const postfixSASLBudget = 8 * time.Second

// dovecotPenaltyMax is the longest delay of Dovecot's anvil auth penalty.
const dovecotPenaltyMax = 15 * time.Second

// diagnose runs every check; findings come in the order Postfix, Dovecot,
// mailguard.
func diagnose(ctx context.Context, c config.Config, f doctorFlags) []finding {
	var out []finding
	pfFix := "mailguard setup postfix --write" + dirFlag("--postfix-config", f.postfixDir, defaultPostfixDir) +
		", then postfix" + dirFlag("-c", f.postfixDir, defaultPostfixDir) + " reload"
	dvFix := "mailguard setup dovecot --write" + dirFlag("--dovecot-config", f.dovecotConf, defaultDovecotConf) +
		", then " + dovecotReload(f.dovecotConf)

	pc, err := readPostfix(ctx, f.postfixDir)
	switch {
	case errors.Is(err, errNotInstalled):
		out = append(out, finding{area: "postfix", what: "postconf not found: Postfix checks skipped"})
	case err != nil:
		out = append(out, finding{area: "postfix", problem: true, what: "cannot read the configuration in " + f.postfixDir + ": " + err.Error(),
			fix: "--postfix-config DIR names another instance"})
	default:
		out = append(out, checkPostfix(pc, c.Postfix.Listen, pfFix)...)
	}

	var dc *dovecotConf
	if _, err := toolPath("doveconf"); err != nil {
		out = append(out, finding{area: "dovecot", what: "doveconf not found: Dovecot checks skipped"})
	} else if dc, err = readDovecot(ctx, f.dovecotConf); err != nil {
		out = append(out, finding{area: "dovecot", problem: true, what: "cannot read the configuration " + f.dovecotConf + ": " + err.Error(),
			fix: "--dovecot-config FILE names another instance"})
		dc = nil
	} else {
		var sasl []string
		if pc != nil {
			sasl = pc.dovecotSASL()
		}
		out = append(out, checkDovecot(dc, c, sasl, dvFix)...)
	}

	header, _ := dovecotAPIHeader(c, false)
	if dc != nil {
		header = dc.APIHeader
	}
	out = append(out, checkDaemon(ctx, c, header)...)
	return out
}

// effectiveList is one restriction list of a service and where it is set:
// service is the master.cf entry that overrides it, "" for main.cf.
type effectiveList struct {
	param, value, where, service string
}

func serviceLists(pc *postfixConf, s *smtpdService) []effectiveList {
	var out []effectiveList
	for _, p := range restrictionLists {
		if s != nil {
			if v, ok := s.OverX[p]; ok {
				out = append(out, effectiveList{p, v, "master.cf service " + s.key() + " -o " + p, s.key()})
				continue
			}
		}
		out = append(out, effectiveList{p, pc.MainX[p], "main.cf " + p, ""})
	}
	return out
}

func checkPostfix(pc *postfixConf, listen, fix string) []finding {
	ours, err := listenEndpoint(listen)
	if err != nil {
		return []finding{{area: "mailguard", problem: true, what: "postfix.listen " + err.Error(), fix: "set postfix.listen to host:port or unix:/path"}}
	}
	server := postfixServer(ours, pc.QueueDir)
	policy := "check_policy_service { " + server + ", default_action=DUNNO }" // contrib's, unless contrib lost it
	if p, err := contribPolicy(server); err == nil {
		policy = p.String()
	}
	var out []finding
	seen := map[string]bool{}
	add := func(x finding) {
		if !seen[x.what] {
			seen[x.what] = true
			out = append(out, x)
		}
	}
	services := make([]*smtpdService, 0, len(pc.Services))
	for i := range pc.Services {
		services = append(services, &pc.Services[i])
	}
	if len(services) == 0 {
		services = append(services, nil)
	}
	for _, s := range services {
		lists := serviceLists(pc, s)
		var uses []effectiveList
		var others []string
		var rcpt effectiveList
		for _, l := range lists {
			if l.param == recipientList {
				rcpt = l
			}
			list := parseList(l.value)
			at, permit := policyUses(list, ours, pc.QueueDir)
			for range at {
				uses = append(uses, l)
			}
			for _, e := range list {
				if e.name == "check_policy_service" {
					if srv, _ := policyArg(e.arg); !ours.matches(policyEndpoint(srv, pc.QueueDir)) {
						others = append(others, srv)
					}
				}
			}
			for _, i := range at {
				_, attrs := policyArg(list[i].arg)
				if _, ok := policyAttr(attrs, "default_action"); !ok {
					add(finding{area: "postfix", problem: true,
						what: "mailguard's check_policy_service in " + l.where + " has no default_action: while mailguard is down every RCPT gets 451 4.3.5",
						fix:  "write it as " + policy + " (" + fix + ")"})
				}
			}
			if l.param == recipientList && len(at) > 0 && permit != "" {
				// After permit_sasl_authenticated (or permit) it misses what it
				// is for; after another permit_* it spares a trusted group,
				// which may be meant: a note.
				why, bad := "clients it permits are never checked", false
				switch permit {
				case "permit_sasl_authenticated":
					why, bad = "authenticated senders are never counted or refused", true
				case "permit":
					why, bad = "it is never asked", true
				}
				add(finding{area: "postfix", problem: bad,
					what: "mailguard's check_policy_service comes after " + permit + " in " + l.where + ": " + why,
					fix:  "move it first in the list (" + fix + ")"})
			}
		}
		switch {
		case len(uses) == 0:
			what := rcpt.where + " has no check_policy_service for mailguard (postfix.listen " + listen + "): Postfix never asks it"
			if rcpt.service != "" {
				what = "master.cf service " + rcpt.service + " overrides smtpd_recipient_restrictions without mailguard's check_policy_service: that service never asks mailguard"
			}
			if len(others) > 0 {
				what += " (policy services found: " + strings.Join(others, ", ") + ")"
			}
			add(finding{area: "postfix", problem: true, what: what, fix: fix + " (or put " + policy + " first in it)"})
		case len(uses) > 1:
			var where []string
			for _, u := range uses {
				where = append(where, u.where)
			}
			add(finding{area: "postfix", problem: true,
				what: fmt.Sprintf("mailguard's check_policy_service is listed %d times (%s): Postfix asks it more than once per RCPT", len(uses), strings.Join(where, "; ")),
				fix:  "keep one, first in smtpd_recipient_restrictions (" + fix + ")"})
		case uses[0].param != recipientList:
			add(finding{area: "postfix", problem: true,
				what: "mailguard's check_policy_service is in " + uses[0].where + ", not in smtpd_recipient_restrictions: recipients are not counted there",
				fix:  "move it first into smtpd_recipient_restrictions (" + fix + ")"})
		}
		if s != nil {
			if note := tlsNote(pc, s); note != "" {
				add(finding{area: "postfix", what: note})
			}
		}
	}
	return out
}

// tlsNote says when `mailguard simulate` needs TLS against a service.
func tlsNote(pc *postfixConf, s *smtpdService) string {
	get := func(p string) string { return pc.param(s, p) }
	switch {
	case get("smtpd_tls_wrappermode") == "yes":
		return "service " + s.key() + " speaks TLS from the start: `mailguard simulate` against it needs --tls"
	case get("smtpd_tls_auth_only") == "yes" || get("smtpd_tls_security_level") == "encrypt":
		return "service " + s.key() + " offers AUTH only after STARTTLS: `mailguard simulate` against it needs --starttls"
	}
	return ""
}

// sameAPIHeader compares two auth_policy_server_api_header values the way
// Dovecot sends and mailguard checks them.
func sameAPIHeader(a, b string) bool {
	norm := func(h string) string {
		h = strings.TrimSpace(h)
		name, v, ok := strings.Cut(h, ":")
		if !ok {
			return "x-api-key:" + h
		}
		return strings.ToLower(strings.TrimSpace(name)) + ":" + strings.TrimSpace(v)
	}
	return norm(a) == norm(b)
}

// checkDovecot checks Dovecot's auth policy settings against mailguard's;
// sasl names the Postfix services whose SMTP AUTH goes through Dovecot
// (whose delays then count against Postfix's limit).
func checkDovecot(dc *dovecotConf, c config.Config, sasl []string, fix string) []finding {
	var out []finding
	bad := func(what, how string) {
		out = append(out, finding{area: "dovecot", problem: true, what: what, fix: how})
	}
	wantURL, urlErr := dovecotURL(c.Dovecot.Listen)
	switch ep, isHTTP := urlEndpoint(dc.URL); {
	case dc.URL == "":
		bad("auth_policy_server_url is not set in "+dc.File+": Dovecot never asks mailguard", fix)
	case !isHTTP:
		bad("auth_policy_server_url is "+dc.URL+": mailguard speaks plain http://", fix)
	case urlErr != nil:
		bad(urlErr.Error(), "set dovecot.listen to host:port")
	default:
		l, _ := listenEndpoint(c.Dovecot.Listen)
		if !l.matches(ep) {
			bad("auth_policy_server_url is "+dc.URL+", but mailguard's dovecot.listen is "+c.Dovecot.Listen+" (want "+wantURL+")", fix)
		}
	}
	want, wantErr := dovecotAPIHeader(c, false)
	switch {
	case isPlaceholder(dc.APIHeader):
		bad("auth_policy_server_api_header is still contrib's REPLACE_ placeholder", fix)
	case wantErr != nil:
		bad("cannot tell which API header mailguard wants: "+wantErr.Error(),
			"start mailguard once (it makes "+dovecotKeyPath(c)+"), or set dovecot.api_header; then "+fix)
	case want == "":
		bad("dovecot.insecure_no_auth is true: any local process can report failed logins to mailguard (and ban any address)",
			"remove dovecot.insecure_no_auth, restart mailguard (it makes its key), then "+fix)
	case dc.APIHeader == "":
		bad("auth_policy_server_api_header is not set: mailguard answers Dovecot with 401 and Dovecot lets every login through", fix)
	case !sameAPIHeader(dc.APIHeader, want):
		bad("auth_policy_server_api_header does not match mailguard's dovecot.api_header (values not shown): mailguard answers 401 and Dovecot lets every login through", fix)
	}
	switch {
	case dc.URL == "":
	case dc.Nonce == "":
		bad("auth_policy_hash_nonce is not set: Dovecot's auth policy does not work without it", fix)
	case isPlaceholder(dc.Nonce):
		bad("auth_policy_hash_nonce is still contrib's REPLACE_ placeholder: it must be a secret, the same on every Dovecot of the site", fix)
	}
	// Dovecot holds one SMTP AUTH for its penalty, then auth_failure_delay,
	// and mailguard's tarpit comes on top: past ~10 s Postfix gives up.
	tarpit := c.Dovecot.Tarpit.Max.D()
	var penalty time.Duration
	switch dc.Penalty {
	case "on":
		penalty = dovecotPenaltyMax
	case "":
		if len(sasl) > 0 {
			out = append(out, finding{area: "dovecot", what: "cannot tell from doveconf whether Dovecot's anvil auth penalty is on (up to 15 s per address); it counts against Postfix's ~10 s for SMTP AUTH"})
		}
	}
	if sum := penalty + dc.FailureDelay + tarpit; len(sasl) > 0 && sum > postfixSASLBudget {
		what := fmt.Sprintf("Postfix hands SMTP AUTH to Dovecot (%s) and one can be held up to %s (Dovecot's anvil penalty %s + auth_failure_delay %s + mailguard's dovecot.tarpit.max %s), but Postfix waits only about 10 s and then answers 454 instead of 535",
			strings.Join(sasl, ", "), sum, penalty, dc.FailureDelay, tarpit)
		how := fmt.Sprintf("keep the sum under %s", postfixSASLBudget)
		if penalty > 0 {
			how = "switch Dovecot's penalty off (service anvil { unix_listener anvil-auth-penalty { mode = 0 } }) and let mailguard's site-wide tarpit do that work, and " + how
		}
		bad(what, how)
	}
	if dc.PlaintextRefused {
		out = append(out, finding{area: "dovecot", what: "Dovecot refuses plaintext logins without TLS from other addresses: `mailguard simulate` against IMAP/POP3 needs --starttls (143, 110) or --tls (993, 995)"})
	}
	return out
}

// checkDaemon asks the running mailguard on its three doors: the admin
// socket, the Postfix policy listener (a request without a client address,
// which it answers DUNNO without counting anything) and the Dovecot one (an
// unknown command with Dovecot's API header: 400 means the header passed,
// 401 that mailguard refuses it).
func checkDaemon(ctx context.Context, c config.Config, header string) []finding {
	var out []finding
	down := func(what, fix string) {
		out = append(out, finding{area: "mailguard", problem: true, what: what, fix: fix})
	}
	const start = "start it (systemctl start mailguard) or check its log (journalctl -u mailguard)"
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := (&admin.Client{Socket: c.Admin.Socket}).Status(actx, "")
	cancel()
	var ue *admin.UnreachableError
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if err != nil {
		down("no answer on admin.socket "+c.Admin.Socket+": "+err.Error(), start+"; --socket names another socket")
	}
	if err := probePolicy(ctx, c.Postfix.Listen); err != nil {
		down("no policy answer on postfix.listen "+c.Postfix.Listen+": "+err.Error(), start)
	}
	code, err := probeAuthPolicy(ctx, c.Dovecot.Listen, header)
	switch {
	case err != nil:
		down("no answer on dovecot.listen "+c.Dovecot.Listen+": "+err.Error(), start)
	case code == http.StatusUnauthorized:
		down("mailguard on dovecot.listen refuses the API header Dovecot sends (401): Dovecot lets every login through",
			"make auth_policy_server_api_header and dovecot.api_header the same line (mailguard setup dovecot --write), restart mailguard if its config changed")
	case code != http.StatusBadRequest:
		down(fmt.Sprintf("dovecot.listen %s answered HTTP %d, not like mailguard", c.Dovecot.Listen, code), "check that mailguard, not another program, listens there")
	}
	return out
}

func dialListen(ctx context.Context, listen string) (net.Conn, error) {
	l, err := listenEndpoint(listen)
	if err != nil {
		return nil, err
	}
	addr := l.addr
	if l.network == "tcp" {
		h, p, _ := net.SplitHostPort(addr)
		if h == "" {
			addr = net.JoinHostPort("127.0.0.1", p)
		}
	}
	d := net.Dialer{Timeout: 3 * time.Second}
	return d.DialContext(ctx, l.network, addr)
}

func probePolicy(ctx context.Context, listen string) error {
	conn, err := dialListen(ctx, listen)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "request=smtpd_access_policy\nprotocol_state=RCPT\n\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "action=") {
		return fmt.Errorf("answered %q, not a policy action", strings.TrimSpace(line))
	}
	return nil
}

func probeAuthPolicy(ctx context.Context, listen, header string) (int, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dialListen(ctx, listen) },
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://mailguard/?command=mailguard-doctor", strings.NewReader("{}"))
	if err != nil {
		return 0, err
	}
	if h := strings.TrimSpace(header); h != "" {
		name, v, ok := strings.Cut(h, ":")
		if !ok {
			name, v = "X-API-Key", h
		}
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(v))
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

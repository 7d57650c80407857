package main

// The live wiring of Postfix and Dovecot to mailguard, as `setup` and
// `doctor` read it: every value comes from the servers' own tools (postconf,
// doveconf, dovecot --version), never from parsing their files by hand.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mailguard/mailguard/contrib"
)

// Default locations of the stock instances.
const (
	defaultPostfixDir  = "/etc/postfix"
	defaultDovecotConf = "/etc/dovecot/dovecot.conf"
)

// restrictionLists are the smtpd restriction lists a policy service can sit
// in; smtpd_recipient_restrictions is where mailguard's belongs.
var restrictionLists = []string{
	"smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
	"smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
	"smtpd_end_of_data_restrictions", "smtpd_etrn_restrictions",
}

const recipientList = "smtpd_recipient_restrictions"

// serviceParams decide whether a service offers AUTH without TLS, and
// whether its SMTP AUTH goes to Dovecot.
var serviceParams = []string{"smtpd_tls_auth_only", "smtpd_tls_security_level", "smtpd_tls_wrappermode",
	"smtpd_sasl_auth_enable", "smtpd_sasl_type"}

// errNotInstalled means a server's tool is not on this host.
var errNotInstalled = errors.New("not installed")

// toolPath finds a mail server program: $PATH, then the sbin directories a
// non-root PATH lacks.
func toolPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, errNotInstalled)
}

// runTool runs a mail server program and returns its standard output; a
// failure carries the first lines of its standard error. Arguments never
// hold secrets (setting names and restriction lists only).
func runTool(ctx context.Context, name string, args ...string) (string, error) {
	p, err := toolPath(name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, p, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.IndexByte(msg, '\n'); i > 0 {
			msg = msg[:i]
		}
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return string(out), nil
}

// ---- Postfix ----

// elem is one element of a Postfix restriction list: a restriction and, for
// those that take one (check_policy_service, check_*_access ...), its
// argument, which may be a { ... } group.
type elem struct {
	name, arg string
}

func (e elem) String() string {
	if e.arg == "" {
		return e.name
	}
	return e.name + " " + e.arg
}

// takesArg lists the restrictions whose next token is their argument.
func takesArg(name string) bool {
	if strings.HasPrefix(name, "check_") {
		return true
	}
	switch name {
	case "reject_rbl_client", "reject_rhsbl_client", "reject_rhsbl_sender", "reject_rhsbl_helo",
		"reject_rhsbl_recipient", "reject_rhsbl_reverse_client", "permit_dnswl_client", "permit_rhswl_client":
		return true
	}
	return false
}

// splitList tokenizes a Postfix list the way Postfix does (mystrtokq):
// commas and white space separate, a { ... } group is one token.
func splitList(s string) []string {
	var toks []string
	depth, start := 0, -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		sep := c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n'
		switch {
		case sep && depth == 0:
			if start >= 0 {
				toks = append(toks, s[start:i])
				start = -1
			}
			continue
		case c == '{':
			depth++
		case c == '}' && depth > 0:
			depth--
		}
		if start < 0 {
			start = i
		}
	}
	if start >= 0 {
		toks = append(toks, s[start:])
	}
	return toks
}

// parseList splits a restriction list into elements.
func parseList(s string) []elem {
	toks := splitList(s)
	var out []elem
	for i := 0; i < len(toks); i++ {
		e := elem{name: toks[i]}
		if takesArg(e.name) && i+1 < len(toks) {
			i++
			e.arg = toks[i]
		}
		out = append(out, e)
	}
	return out
}

func joinList(es []elem) string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.String()
	}
	return strings.Join(s, ", ")
}

// policyArg splits check_policy_service's argument: a server name, or
// { server, name=value, ... }.
func policyArg(arg string) (server string, attrs []string) {
	inner, ok := strings.CutPrefix(strings.TrimSpace(arg), "{")
	if !ok {
		return arg, nil
	}
	inner = strings.TrimSuffix(strings.TrimSpace(inner), "}")
	toks := splitList(inner)
	if len(toks) == 0 {
		return "", nil
	}
	return toks[0], toks[1:]
}

func policyAttr(attrs []string, name string) (string, bool) {
	for _, a := range attrs {
		k, v, ok := strings.Cut(a, "=")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// endpoint is where a client connects: network "tcp" (addr host:port, host
// "" for any) or "unix" (addr an absolute path).
type endpoint struct {
	network, addr string
}

func (e endpoint) String() string { return e.network + ":" + e.addr }

// normHost maps the loopback names to one spelling and a wildcard to "".
func normHost(h string) string {
	switch strings.Trim(h, "[]") {
	case "", "0.0.0.0", "::", "*":
		return ""
	case "localhost", "127.0.0.1":
		return "127.0.0.1"
	case "::1", "ip6-localhost":
		return "::1"
	}
	return strings.ToLower(strings.Trim(h, "[]"))
}

// listenEndpoint is a mailguard listen setting (host:port, inet:host:port,
// unix:/path) as an endpoint.
func listenEndpoint(listen string) (endpoint, error) {
	if p, ok := strings.CutPrefix(listen, "unix:"); ok {
		return endpoint{"unix", filepath.Clean(p)}, nil
	}
	h, p, err := net.SplitHostPort(strings.TrimPrefix(listen, "inet:"))
	if err != nil {
		return endpoint{}, fmt.Errorf("%q: %w", listen, err)
	}
	return endpoint{"tcp", net.JoinHostPort(normHost(h), p)}, nil
}

// policyEndpoint is a check_policy_service server name as Postfix resolves
// it: inet:host:port, unix:path or a bare path (relative to queue_directory,
// where a chrooted smtpd sees it).
func policyEndpoint(server, queueDir string) endpoint {
	if hp, ok := strings.CutPrefix(server, "inet:"); ok {
		if h, p, err := net.SplitHostPort(hp); err == nil {
			return endpoint{"tcp", net.JoinHostPort(normHost(h), p)}
		}
		return endpoint{"tcp", hp}
	}
	path := strings.TrimPrefix(server, "unix:")
	if !filepath.IsAbs(path) {
		path = filepath.Join(queueDir, path)
	}
	return endpoint{"unix", filepath.Clean(path)}
}

// matches reports whether a client endpoint c reaches the listener l.
func (l endpoint) matches(c endpoint) bool {
	if l.network != c.network {
		return false
	}
	if l.network == "unix" {
		return l.addr == c.addr
	}
	lh, lp, _ := net.SplitHostPort(l.addr)
	ch, cp, _ := net.SplitHostPort(c.addr)
	return lp == cp && (lh == "" || lh == ch)
}

// postfixServer is how Postfix should name the listener: inet:host:port (a
// wildcard listener is reached on loopback), or for a unix socket under
// queue_directory the path relative to it (smtpd is chrooted there on
// Debian), else the absolute path.
func postfixServer(l endpoint, queueDir string) string {
	if l.network == "unix" {
		if rel, err := filepath.Rel(queueDir, l.addr); err == nil && !strings.HasPrefix(rel, "..") {
			return "unix:" + rel
		}
		return "unix:" + l.addr
	}
	h, p, _ := net.SplitHostPort(l.addr)
	if h == "" {
		h = "127.0.0.1"
	}
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	return "inet:" + h + ":" + p
}

// contribPolicy is contrib/postfix/main.cf's check_policy_service element
// with server in place of the one written there: its attributes (timeout,
// default_action ...) are contrib's.
func contribPolicy(server string) (elem, error) {
	b, err := contrib.File(contrib.PostfixMain)
	if err != nil {
		return elem{}, err
	}
	var text strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		text.WriteString(l + "\n")
	}
	toks := splitList(text.String())
	for i, t := range toks {
		if t != "check_policy_service" || i+1 >= len(toks) || !strings.HasPrefix(toks[i+1], "{") {
			continue
		}
		_, attrs := policyArg(toks[i+1])
		return elem{name: "check_policy_service", arg: "{ " + strings.Join(append([]string{server}, attrs...), ", ") + " }"}, nil
	}
	return elem{}, errors.New("contrib/postfix/main.cf has no check_policy_service { ... } element")
}

// postfixConf is what setup and doctor read from one Postfix instance.
type postfixConf struct {
	Dir      string            // config_directory given to postconf -c
	QueueDir string            // queue_directory
	Main     map[string]string // main.cf restriction lists, raw
	MainX    map[string]string // the same, $names expanded
	Services []smtpdService    // master.cf services running smtpd
}

// smtpdService is a master.cf entry that runs smtpd, with its -o overrides.
type smtpdService struct {
	Name, Type string
	Over       map[string]string // -o name=value, raw
	OverX      map[string]string // the same, expanded
}

func (s smtpdService) key() string { return s.Name + "/" + s.Type }

// param is a parameter's expanded value for service s (main.cf's when s is
// nil or does not override it).
func (pc *postfixConf) param(s *smtpdService, name string) string {
	if s != nil {
		if v, ok := s.OverX[name]; ok {
			return v
		}
	}
	return pc.MainX[name]
}

// dovecotSASL lists the smtpd services whose SMTP AUTH Postfix hands to
// Dovecot (smtpd_sasl_auth_enable = yes, smtpd_sasl_type = dovecot).
func (pc *postfixConf) dovecotSASL() []string {
	var out []string
	for i := range pc.Services {
		s := &pc.Services[i]
		if pc.param(s, "smtpd_sasl_auth_enable") == "yes" && pc.param(s, "smtpd_sasl_type") == "dovecot" {
			out = append(out, s.key())
		}
	}
	return out
}

// nameValues reads postconf's "name = value" lines.
func nameValues(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(l, " =")
		if !ok {
			continue
		}
		m[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return m
}

func readPostfix(ctx context.Context, dir string) (*postfixConf, error) {
	pc := &postfixConf{Dir: dir}
	c := []string{"-c", dir}
	out, err := runTool(ctx, "postconf", append(c, "-h", "queue_directory")...)
	if err != nil {
		return nil, err
	}
	pc.QueueDir = strings.TrimSpace(out)
	if out, err = runTool(ctx, "postconf", append(c, restrictionLists...)...); err != nil {
		return nil, err
	}
	pc.Main = nameValues(out)
	if out, err = runTool(ctx, "postconf", append(append(append(c, "-x"), restrictionLists...), serviceParams...)...); err != nil {
		return nil, err
	}
	pc.MainX = nameValues(out)
	cmds, err := runTool(ctx, "postconf", append(c, "-F", "*/*/command")...)
	if err != nil {
		return nil, err
	}
	over, err := runTool(ctx, "postconf", append(c, "-P")...)
	if err != nil {
		return nil, err
	}
	overX, err := runTool(ctx, "postconf", append(c, "-P", "-x")...)
	if err != nil {
		return nil, err
	}
	ov, ovx := nameValues(over), nameValues(overX)
	for k, cmd := range nameValues(cmds) {
		svc := strings.TrimSuffix(k, "/command")
		f := strings.Fields(cmd)
		if len(f) == 0 || filepath.Base(f[0]) != "smtpd" {
			continue
		}
		i := strings.LastIndexByte(svc, '/')
		if i < 0 {
			continue
		}
		s := smtpdService{Name: svc[:i], Type: svc[i+1:], Over: map[string]string{}, OverX: map[string]string{}}
		for p, v := range ov {
			if name, ok := strings.CutPrefix(p, svc+"/"); ok && !strings.Contains(name, "/") {
				s.Over[name] = v
				s.OverX[name] = ovx[p]
			}
		}
		pc.Services = append(pc.Services, s)
	}
	slices.SortFunc(pc.Services, func(a, b smtpdService) int { return strings.Compare(a.key(), b.key()) })
	return pc, nil
}

// ---- Dovecot ----

// dovecotConf is what setup and doctor read from one Dovecot instance.
type dovecotConf struct {
	File         string
	Version      string // as dovecot --version prints it
	Major, Minor int
	URL          string
	APIHeader    string // secret: never printed
	Nonce        string // secret: never printed
	FailureDelay time.Duration
	// Penalty is Dovecot's per-address auth penalty (anvil): "on", "off",
	// or "" when this version does not tell.
	Penalty string
	// PlaintextRefused: plaintext logins are refused on connections without
	// TLS from other addresses (disable_plaintext_auth, auth_allow_cleartext).
	PlaintextRefused bool
}

// dovecotVersion runs dovecot --version: "2.3.19.1 (9b53102964)".
func dovecotVersion(ctx context.Context) (string, int, int, error) {
	out, err := runTool(ctx, "dovecot", "--version")
	if err != nil {
		return "", 0, 0, err
	}
	v := strings.Fields(out + " ")[0] // "2.3.19.1", without the build id
	f := strings.SplitN(v, ".", 3)
	if len(f) < 2 {
		return v, 0, 0, fmt.Errorf("dovecot --version: cannot read %q", v)
	}
	major, err1 := strconv.Atoi(f[0])
	minor, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return v, 0, 0, fmt.Errorf("dovecot --version: cannot read %q", v)
	}
	return v, major, minor, nil
}

// doveconf reads one setting of file's configuration ("" when unset or
// unknown to this version).
func doveconf(ctx context.Context, file, name string) (string, error) {
	out, err := runTool(ctx, "doveconf", "-c", file, "-h", name)
	return strings.TrimSpace(out), err
}

func readDovecot(ctx context.Context, file string) (*dovecotConf, error) {
	dc := &dovecotConf{File: file}
	var err error
	if dc.Version, dc.Major, dc.Minor, err = dovecotVersion(ctx); err != nil {
		return nil, err
	}
	get := func(name string) string {
		if err != nil {
			return ""
		}
		var v string
		v, err = doveconf(ctx, file, name)
		return v
	}
	dc.URL = get("auth_policy_server_url")
	dc.APIHeader = get("auth_policy_server_api_header")
	dc.Nonce = get("auth_policy_hash_nonce")
	delay := get("auth_failure_delay")
	mode := get("service/anvil/unix_listener/anvil-auth-penalty/mode")
	plain := get("disable_plaintext_auth")
	clear := ""
	if dc.Major > 2 || dc.Minor >= 4 {
		clear = get("auth_allow_cleartext")
	}
	if err != nil {
		return nil, err
	}
	if dc.FailureDelay, err = dovecotDuration(delay); err != nil {
		return nil, fmt.Errorf("doveconf auth_failure_delay: %w", err)
	}
	switch {
	case mode == "":
	case strings.Trim(mode, "0") == "":
		dc.Penalty = "off"
	default:
		dc.Penalty = "on"
	}
	dc.PlaintextRefused = plain == "yes" || clear == "no"
	return dc, nil
}

// dovecotUnits are the time units doveconf prints and accepts.
var dovecotUnits = map[string]time.Duration{
	"": time.Second, "s": time.Second, "sec": time.Second, "secs": time.Second, "second": time.Second, "seconds": time.Second,
	"ms": time.Millisecond, "msec": time.Millisecond, "msecs": time.Millisecond, "millisecond": time.Millisecond, "milliseconds": time.Millisecond,
	"m": time.Minute, "min": time.Minute, "mins": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hour": time.Hour, "hours": time.Hour,
}

// dovecotDuration reads a Dovecot time value: "2 secs", "500 msecs", "2s",
// "1 min", a bare number of seconds; "" is 0.
func dovecotDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		i = len(s)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	unit, ok := dovecotUnits[strings.TrimSpace(s[i:])]
	if err != nil || !ok {
		return 0, fmt.Errorf("invalid time %q", s)
	}
	return time.Duration(n) * unit, nil
}

// dovecotURL is auth_policy_server_url for a dovecot.listen setting: Dovecot
// speaks HTTP over TCP to it; a wildcard listener is reached on loopback.
func dovecotURL(listen string) (string, error) {
	l, err := listenEndpoint(listen)
	if err != nil {
		return "", fmt.Errorf("dovecot.listen %w", err)
	}
	if l.network != "tcp" {
		return "", fmt.Errorf("dovecot.listen is %s: Dovecot's auth_policy_server_url is an http:// URL, so mailguard must listen on host:port", listen)
	}
	h, p, _ := net.SplitHostPort(l.addr)
	if h == "" {
		h = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(h, p) + "/", nil
}

// urlEndpoint is the host:port of an http:// URL.
func urlEndpoint(u string) (endpoint, bool) {
	rest, ok := strings.CutPrefix(u, "http://")
	if !ok {
		return endpoint{}, false
	}
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	h, p, err := net.SplitHostPort(rest)
	if err != nil {
		h, p = rest, "80"
	}
	return endpoint{"tcp", net.JoinHostPort(normHost(h), p)}, true
}

// isPlaceholder reports whether a value is still a contrib placeholder.
func isPlaceholder(v string) bool { return strings.Contains(v, "REPLACE_") }

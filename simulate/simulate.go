// Package simulate plays a password-guessing client against one mail server
// the administrator names, to see mailguard at work: it logs in with a wrong
// password over IMAP (LOGIN, RFC 9051), POP3 (USER/PASS, RFC 1939) or SMTP
// (EHLO, then AUTH PLAIN, RFC 4954), one connection per attempt, and reports
// when the server starts refusing.
//
// It speaks plaintext, STARTTLS (IMAP STARTTLS, POP3 STLS, SMTP STARTTLS:
// RFC 9051, 2595, 3207) or implicit TLS (993, 995, 465). It never resolves
// names: the target must be an IP address, so it cannot be aimed at anything
// but the address typed.
//
// simulate is a client: it knows mailguard's refusals only by what Dovecot
// and Postfix show of them (the shapes in DefaultRejectMsg's comment), not
// by importing the daemon.
package simulate

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
)

// DefaultRejectMsg and DefaultRejectUserMsg are the daemon's default
// dovecot.reject_msg and dovecot.reject_msg_user (a test in cmd/mailguard
// keeps them equal). Dovecot shows a refusal by mailguard as IMAP
// "NO [ALERT] msg", POP3 "-ERR [AUTH] msg" and, through Postfix,
// SMTP "535 5.7.8 Error: authentication failed: msg".
const (
	DefaultRejectMsg     = "Too many failed logins from your network. Try again later or contact your mail administrator."
	DefaultRejectUserMsg = "Too many failed logins to this account. Try again later from a device you used before, or contact your mail administrator."
)

// Options says what to simulate.
type Options struct {
	// Target is "IP:port" ("127.0.0.1:143", "[::1]:110"). Host names are
	// refused: simulate talks only to an address the administrator typed.
	Target   string
	Protocol string // imap, pop3 or smtp
	User     string
	// Password is sent at every attempt. Empty: a different made-up
	// password per attempt, so jails counting distinct passwords count each.
	Password string
	Attempts int        // zero: 10; at most 1000
	Source   netip.Addr // local address to connect from (e.g. 127.0.0.2); zero: any
	Delay    time.Duration
	// Timeout bounds one attempt, connection to answer (zero: 30s; Dovecot
	// delays failures by 2s and mailguard may tarpit a few more).
	Timeout time.Duration
	// TLS speaks TLS from the first byte (IMAPS 993, POP3S 995, SMTP 465);
	// StartTLS upgrades a plaintext connection before logging in (IMAP 143,
	// POP3 110, SMTP submission 587). At most one of them.
	TLS, StartTLS bool
	// Insecure accepts any server certificate (a self-signed test server).
	Insecure bool
	// ServerName is the name the server's certificate must carry, also sent
	// as SNI. Empty: the target's IP address.
	ServerName string
	// RejectMsg and RejectUserMsg are mailguard's dovecot.reject_msg and
	// dovecot.reject_msg_user (zero: the defaults). An answer carrying one is
	// a refusal by policy; so is IMAP's [ALERT], and a POP3 or SMTP failure
	// whose text is not Dovecot's generic one.
	RejectMsg, RejectUserMsg string
	Out                      io.Writer // the report; nil: none

	// dial connects from source (zero: any); tests replace it. nil: net.Dialer.
	dial func(ctx context.Context, source netip.Addr, target netip.AddrPort) (net.Conn, error)
}

// Verdict classifies one attempt.
type Verdict string

const (
	Failed      Verdict = "failed"               // wrong password, as expected
	Refused     Verdict = "refused by policy"    // mailguard's refusal
	ConnRefused Verdict = "connection refused"   // a firewall reject (or nothing listens)
	TimedOut    Verdict = "connection timed out" // a firewall drop
	TempFailed  Verdict = "temporary failure"    // IMAP [UNAVAILABLE], POP3 [SYS/TEMP], SMTP 454
	Succeeded   Verdict = "login succeeded"      // the password was right after all
	Error       Verdict = "error"                // a protocol error; Answer says which
)

// refusal reports whether v means the client is refused.
func (v Verdict) refusal() bool { return v == Refused || v == ConnRefused || v == TimedOut }

// Attempt is one login attempt.
type Attempt struct {
	N       int
	Elapsed time.Duration // from dialling to the answer
	Answer  string        // the server's answer line, trimmed; or what went wrong
	Verdict Verdict
}

// Result is what Run saw.
type Result struct {
	Attempts  []Attempt
	RefusedAt int // the first attempt refused (by policy or the network); 0: never
	// Banned: the first attempt's connection timed out while the server
	// answered a connection from another address: the source is most
	// likely in the firewall already.
	Banned bool
}

// SetupError says that the options do not fit the server (no TLS where it
// wants TLS, no AUTH offered, a certificate not trusted): no attempt can
// tell a refusal from a failure. Hint says what to change.
type SetupError struct {
	Problem, Hint string
}

func (e *SetupError) Error() string {
	if e.Hint == "" {
		return e.Problem
	}
	return e.Problem + "\nhint: " + e.Hint
}

const maxAttempts = 1000

func (o *Options) check() (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(o.Target)
	if err != nil {
		return ap, fmt.Errorf("simulate: target %q must be IP:port (simulate does not resolve names): %w", o.Target, err)
	}
	if ap.Port() == 0 {
		return ap, fmt.Errorf("simulate: target %q has no port", o.Target)
	}
	o.Protocol = strings.ToLower(o.Protocol)
	switch o.Protocol {
	case "imap", "pop3", "smtp":
	default:
		return ap, fmt.Errorf("simulate: protocol %q: want imap, pop3 or smtp", o.Protocol)
	}
	if o.User == "" {
		return ap, errors.New("simulate: no user")
	}
	if strings.ContainsAny(o.User+o.Password, "\r\n\x00") {
		return ap, errors.New("simulate: user and password must not contain CR, LF or NUL")
	}
	if o.TLS && o.StartTLS {
		return ap, errors.New("simulate: --tls and --starttls exclude each other (--tls for 993, 995, 465; --starttls for 143, 110, 587)")
	}
	if o.Attempts <= 0 {
		o.Attempts = 10
	}
	if o.Attempts > maxAttempts {
		return ap, fmt.Errorf("simulate: %d attempts: at most %d", o.Attempts, maxAttempts)
	}
	if o.Source.IsValid() && o.Source.Unmap().Is4() != ap.Addr().Unmap().Is4() {
		return ap, fmt.Errorf("simulate: source %s and target %s are not of one address family", o.Source, ap.Addr())
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.RejectMsg == "" {
		o.RejectMsg = DefaultRejectMsg
	}
	if o.RejectUserMsg == "" {
		o.RejectUserMsg = DefaultRejectUserMsg
	}
	if o.ServerName == "" {
		o.ServerName = ap.Addr().String()
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.dial == nil {
		o.dial = func(ctx context.Context, source netip.Addr, target netip.AddrPort) (net.Conn, error) {
			var d net.Dialer
			if source.IsValid() {
				d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(source, 0))
			}
			return d.DialContext(ctx, "tcp", target.String())
		}
	}
	return ap, nil
}

// Run makes o.Attempts failed logins and reports each to o.Out. It returns
// an error for invalid options, a *SetupError when the options do not fit
// the server, an error when the first attempt cannot connect (the server is
// not running) or when attempts ended in errors and none was refused, and
// ctx's error when ctx is done.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	target, err := o.check()
	if err != nil {
		return res, err
	}
	from, mode := "", ""
	if o.Source.IsValid() {
		from = " from " + o.Source.String()
	}
	switch {
	case o.TLS:
		mode = " over TLS"
	case o.StartTLS:
		mode = " with STARTTLS"
	}
	fmt.Fprintf(o.Out, "simulating %d failed %s logins as %s to %s%s%s\n", o.Attempts, o.Protocol, o.User, target, mode, from)
	errs, temps := 0, 0
	for n := 1; n <= o.Attempts; n++ {
		if n > 1 && o.Delay > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(o.Delay):
			}
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		password := o.Password
		if password == "" {
			password = fmt.Sprintf("mailguard-simulate-%d-%d", time.Now().UnixNano(), n)
		}
		a, setup := o.attempt(ctx, target, password)
		a.N = n
		if a.Verdict == TimedOut && n > 1 && res.RefusedAt == 0 {
			a.Answer += " (likely banned by the firewall)"
		}
		res.Attempts = append(res.Attempts, a)
		fmt.Fprintf(o.Out, "%4d %7.2fs  %-20s  %s\n", n, a.Elapsed.Seconds(), a.Verdict, a.Answer)
		if setup != nil {
			return res, fmt.Errorf("simulate: %s: %w", target, setup)
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if n == 1 && a.Verdict == ConnRefused {
			return res, fmt.Errorf("simulate: %s: %s: is the server running there?", target, a.Verdict)
		}
		if n == 1 && a.Verdict == TimedOut {
			if !o.answersOthers(ctx, target) {
				return res, fmt.Errorf("simulate: %s: %s: is the server running there, or is this address banned by a firewall?", target, a.Verdict)
			}
			res.Banned, res.RefusedAt = true, 1
			fmt.Fprintf(o.Out, "connections from %s time out while the server answers from another address: %s is likely banned already (mailguard status; mailguard unban %s)\n",
				o.Source, o.Source, o.Source)
			return res, nil
		}
		switch {
		case a.Verdict.refusal() && res.RefusedAt == 0:
			res.RefusedAt = n
		case a.Verdict == Error:
			errs++
		case a.Verdict == TempFailed:
			temps++
		}
	}
	if res.RefusedAt > 0 {
		fmt.Fprintf(o.Out, "mailguard started refusing at attempt %d\n", res.RefusedAt)
		return res, nil
	}
	if errs > 0 {
		return res, fmt.Errorf("simulate: %d of %d attempts ended in an error and none was refused: see the answers above", errs, len(res.Attempts))
	}
	if temps > 0 {
		fmt.Fprintf(o.Out, "never refused; %d attempts ended in a temporary failure (for SMTP AUTH: Dovecot's delays passed Postfix's 10s; see README, \"Delays\")\n", temps)
		return res, nil
	}
	fmt.Fprintln(o.Out, "never refused")
	return res, nil
}

// answersOthers reports whether the target accepts a connection from
// another local address than o.Source (when o.Source is set).
func (o *Options) answersOthers(ctx context.Context, target netip.AddrPort) bool {
	if !o.Source.IsValid() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := o.dial(ctx, netip.Addr{}, target)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// attempt makes one login on a new connection. A non-nil *SetupError says
// that no attempt with these options can work.
func (o *Options) attempt(ctx context.Context, target netip.AddrPort, password string) (Attempt, *SetupError) {
	start := time.Now()
	// A firewall drop shows as a connection that times out: wait for it at
	// most 10s, however long an attempt may take.
	dctx, cancel := context.WithTimeout(ctx, min(o.Timeout, 10*time.Second))
	defer cancel()
	c, err := o.dial(dctx, o.Source, target)
	if err != nil {
		a := Attempt{Elapsed: time.Since(start), Answer: err.Error(), Verdict: Error}
		var ne net.Error
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			a.Verdict = ConnRefused
		case errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil:
			a.Verdict = TimedOut
		}
		return a, nil
	}
	defer func() { c.Close() }()
	c.SetDeadline(start.Add(o.Timeout))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	s := &session{o: o, raw: c}
	s.setConn(c)
	var answer string
	if o.TLS {
		err = s.handshake()
	}
	if err == nil {
		switch o.Protocol {
		case "imap":
			answer, err = s.imap(o.User, password)
		case "pop3":
			answer, err = s.pop3(o.User, password)
		case "smtp":
			answer, err = s.smtp(o.User, password)
		}
	}
	c = s.conn // close the TLS connection when there is one
	a := Attempt{Elapsed: time.Since(start), Answer: answer}
	var setup *SetupError
	switch {
	case errors.Is(err, errLoggedIn):
		a.Verdict = Succeeded
	case errors.As(err, &setup):
		a.Verdict = Error
		if a.Answer == "" {
			a.Answer = setup.Problem
		}
	case err != nil:
		a.Verdict = Error
		if a.Answer == "" {
			a.Answer = err.Error()
		} else {
			a.Answer += " (" + err.Error() + ")"
		}
	default:
		a.Verdict = o.classify(answer)
	}
	return a, setup
}

// errLoggedIn marks an answer that accepted the password.
var errLoggedIn = errors.New("logged in")

// classify turns the final answer of a failed login into a verdict by its
// protocol shape: Dovecot words a refusal by the auth policy as IMAP
// "NO [ALERT] msg" ("NO msg" when msg starts with '['), POP3
// "-ERR [AUTH] msg" and SMTP "535 5.7.8 Error: authentication failed: msg".
// A text that is one of the reject messages is a refusal in any shape; a
// POP3 or SMTP failure text other than Dovecot's generic one is too, so that
// a changed dovecot.reject_msg is still recognised.
func (o *Options) classify(answer string) Verdict {
	norm := normalize(answer)
	if strings.Contains(norm, normalize(o.RejectMsg)) || strings.Contains(norm, normalize(o.RejectUserMsg)) {
		return Refused
	}
	switch o.Protocol {
	case "imap":
		_, rest, _ := strings.Cut(answer, " ") // the tag
		switch {
		case strings.HasPrefix(rest, "NO [ALERT]"):
			return Refused
		case strings.HasPrefix(rest, "NO [UNAVAILABLE]"):
			return TempFailed
		}
	case "pop3":
		switch {
		case strings.HasPrefix(answer, "-ERR [SYS/TEMP]"):
			return TempFailed
		case strings.HasPrefix(answer, "-ERR [AUTH] "):
			if !genericFailure(strings.TrimPrefix(answer, "-ERR [AUTH] ")) {
				return Refused
			}
		}
	case "smtp":
		switch {
		case strings.HasPrefix(answer, "4"): // 454 4.7.0 Temporary authentication failure
			return TempFailed
		case strings.HasPrefix(answer, "535"):
			if _, msg, ok := strings.Cut(answer, "authentication failed:"); ok && !genericFailure(msg) {
				return Refused
			}
		}
	}
	return Failed
}

// genericFailure reports whether msg is a failure text Dovecot or Postfix
// gives for a wrong password (or a SASL challenge Postfix echoes).
func genericFailure(msg string) bool {
	m := normalize(msg)
	switch m {
	case "", "authentication failed", "authentication failure", "(reason unavailable)":
		return true
	}
	// Postfix echoes the last SASL challenge ("UGFzc3dvcmQ6") for LOGIN.
	if !strings.ContainsAny(m, " \t") {
		if _, err := base64.StdEncoding.DecodeString(strings.TrimSpace(msg)); err == nil {
			return true
		}
	}
	return false
}

// normalize lowercases s, collapses white space and drops a final period.
func normalize(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.Join(strings.Fields(s), " ")), ".")
}

// session is one connection.
type session struct {
	o    *Options
	raw  net.Conn
	conn net.Conn // raw, or the TLS connection over it
	r    *bufio.Reader
	tls  bool
}

func (s *session) setConn(c net.Conn) {
	s.conn = c
	// Bound what a hostile server can make us read.
	s.r = bufio.NewReader(io.LimitReader(c, 1<<16))
}

// handshake starts TLS on the connection.
func (s *session) handshake() error {
	c := tls.Client(s.raw, &tls.Config{
		ServerName:         s.o.ServerName,
		InsecureSkipVerify: s.o.Insecure, //nolint:gosec // the administrator asked for it (--insecure)
		MinVersion:         tls.VersionTLS12,
	})
	if err := c.Handshake(); err != nil {
		hint := "check the port (--tls for 993, 995, 465; --starttls for 143, 110, 587)"
		var cv *tls.CertificateVerificationError
		if errors.As(err, &cv) {
			hint = "the certificate is not trusted for " + s.o.ServerName + ": pass --servername NAME (the name on the certificate) or, for a self-signed test certificate, --insecure"
		}
		return &SetupError{Problem: "TLS handshake: " + err.Error(), Hint: hint}
	}
	s.tls = true
	s.setConn(c)
	return nil
}

func (s *session) line() (string, error) {
	l, err := s.r.ReadString('\n')
	if err != nil {
		if l != "" && errors.Is(err, io.EOF) {
			return strings.TrimSpace(l), nil
		}
		if errors.Is(err, io.EOF) {
			return "", errors.New("connection closed by the server")
		}
		return "", err
	}
	return strings.TrimSpace(l), nil
}

func (s *session) send(format string, args ...any) error {
	_, err := fmt.Fprintf(s.conn, format+"\r\n", args...)
	return err
}

// plaintextRefused is the setup error of a server that wants TLS first.
func (s *session) plaintextRefused(what string) *SetupError {
	hint := "add --starttls (IMAP 143, POP3 110, SMTP submission 587) or --tls (993, 995, 465); --insecure for a self-signed certificate"
	return &SetupError{Problem: what, Hint: hint}
}

// imapQuote makes an IMAP quoted string (check refused CR, LF and NUL).
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func (s *session) imap(user, password string) (string, error) {
	greeting, err := s.line()
	if err != nil {
		return "", fmt.Errorf("reading the greeting: %w", err)
	}
	if !strings.HasPrefix(greeting, "* OK") {
		return greeting, errors.New("unexpected greeting")
	}
	if s.o.StartTLS {
		if err := s.send("a0 STARTTLS"); err != nil {
			return "", err
		}
		l, err := s.tagged("a0")
		if err != nil {
			return "", fmt.Errorf("waiting for the STARTTLS answer: %w", err)
		}
		if !strings.HasPrefix(l, "a0 OK") {
			return l, &SetupError{Problem: "STARTTLS refused: " + l, Hint: "is this port implicit TLS (993)? then use --tls"}
		}
		if err := s.handshake(); err != nil {
			return "", err
		}
	} else if !s.tls && strings.Contains(greeting, "LOGINDISABLED") {
		return greeting, s.plaintextRefused("the server refuses plaintext logins (LOGINDISABLED)")
	}
	if err := s.send("a1 LOGIN %s %s", imapQuote(user), imapQuote(password)); err != nil {
		return "", err
	}
	l, err := s.tagged("a1")
	if err != nil {
		return "", fmt.Errorf("waiting for the LOGIN answer: %w", err)
	}
	s.send("a2 LOGOUT")
	switch {
	case strings.Contains(l, "[PRIVACYREQUIRED]"):
		return l, s.plaintextRefused("the server wants TLS for LOGIN")
	case strings.HasPrefix(l, "a1 NO"):
		return l, nil
	case strings.HasPrefix(l, "a1 OK"):
		return l, errLoggedIn
	}
	return l, errors.New("LOGIN rejected as a command")
}

// tagged reads up to the answer tagged tag, skipping untagged lines.
func (s *session) tagged(tag string) (string, error) {
	for {
		l, err := s.line()
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, "* ") {
			continue // untagged: capabilities, BYE before the tagged answer
		}
		if !strings.HasPrefix(l, tag+" ") {
			return l, errors.New("unexpected answer")
		}
		return l, nil
	}
}

func (s *session) pop3(user, password string) (string, error) {
	greeting, err := s.line()
	if err != nil {
		return "", fmt.Errorf("reading the greeting: %w", err)
	}
	if !strings.HasPrefix(greeting, "+OK") {
		return greeting, errors.New("unexpected greeting")
	}
	if s.o.StartTLS {
		if err := s.send("STLS"); err != nil {
			return "", err
		}
		l, err := s.line()
		if err != nil {
			return "", fmt.Errorf("waiting for the STLS answer: %w", err)
		}
		if !strings.HasPrefix(l, "+OK") {
			return l, &SetupError{Problem: "STLS refused: " + l, Hint: "is this port implicit TLS (995)? then use --tls"}
		}
		if err := s.handshake(); err != nil {
			return "", err
		}
	}
	if err := s.send("USER %s", user); err != nil {
		return "", err
	}
	l, err := s.line()
	if err != nil {
		return "", fmt.Errorf("waiting for the USER answer: %w", err)
	}
	if !strings.HasPrefix(l, "+OK") {
		if !s.tls && strings.Contains(strings.ToLower(l), "plaintext") {
			return l, s.plaintextRefused("the server refuses plaintext logins")
		}
		return l, errors.New("USER refused")
	}
	if err := s.send("PASS %s", password); err != nil {
		return "", err
	}
	l, err = s.line()
	if err != nil {
		return "", fmt.Errorf("waiting for the PASS answer: %w", err)
	}
	s.send("QUIT")
	if strings.HasPrefix(l, "+OK") {
		return l, errLoggedIn
	}
	return l, nil
}

// reply reads an SMTP reply and returns its code and last line.
func (s *session) reply() (int, string, error) {
	code, lines, err := s.replyLines()
	if len(lines) == 0 {
		return code, "", err
	}
	return code, lines[len(lines)-1], err
}

// replyLines reads an SMTP reply and returns its code and every line.
func (s *session) replyLines() (int, []string, error) {
	var lines []string
	for {
		l, err := s.line()
		if err != nil {
			return 0, lines, err
		}
		lines = append(lines, l)
		var code int
		if len(l) < 3 {
			return 0, lines, errors.New("malformed SMTP reply")
		}
		if _, err := fmt.Sscanf(l[:3], "%d", &code); err != nil {
			return 0, lines, errors.New("malformed SMTP reply")
		}
		if len(l) > 3 && l[3] == '-' {
			continue
		}
		return code, lines, nil
	}
}

// ehlo sends EHLO and returns the extensions offered (upper case keywords
// and their parameters).
func (s *session) ehlo() (map[string][]string, string, error) {
	if err := s.send("EHLO simulate.invalid"); err != nil {
		return nil, "", err
	}
	code, lines, err := s.replyLines()
	if err != nil {
		return nil, "", fmt.Errorf("waiting for the EHLO answer: %w", err)
	}
	if code != 250 {
		return nil, lines[len(lines)-1], errors.New("EHLO refused")
	}
	ext := map[string][]string{}
	for _, l := range lines[1:] {
		if f := strings.Fields(strings.ToUpper(l[min(len(l), 4):])); len(f) > 0 {
			ext[f[0]] = f[1:]
		}
	}
	return ext, "", nil
}

func (s *session) smtp(user, password string) (string, error) {
	code, l, err := s.reply()
	if err != nil {
		return l, fmt.Errorf("reading the greeting: %w", err)
	}
	if code != 220 {
		return l, errors.New("unexpected greeting")
	}
	ext, l, err := s.ehlo()
	if err != nil {
		return l, err
	}
	if s.o.StartTLS {
		if _, ok := ext["STARTTLS"]; !ok {
			s.send("QUIT")
			return "", &SetupError{Problem: "the server offers no STARTTLS", Hint: "is this port implicit TLS (465)? then use --tls"}
		}
		if err := s.send("STARTTLS"); err != nil {
			return "", err
		}
		if code, l, err := s.reply(); err != nil || code != 220 {
			return l, &SetupError{Problem: fmt.Sprintf("STARTTLS refused: %s %v", l, err)}
		}
		if err := s.handshake(); err != nil {
			return "", err
		}
		if ext, l, err = s.ehlo(); err != nil {
			return l, err
		}
	}
	plain := false
	for _, m := range ext["AUTH"] {
		plain = plain || m == sasl.Plain
	}
	if !plain {
		s.send("QUIT")
		if _, ok := ext["STARTTLS"]; ok && !s.tls {
			return "", s.plaintextRefused("the server offers no AUTH PLAIN before TLS")
		}
		return "", &SetupError{Problem: "the server offers no AUTH PLAIN",
			Hint: "SMTP AUTH is usually on the submission port (587, --starttls) or 465 (--tls), with smtpd_sasl_auth_enable=yes (see README, \"Wiring Postfix\")"}
	}
	mech, ir, err := sasl.NewPlainClient("", user, password).Start()
	if err != nil {
		return "", err
	}
	if err := s.send("AUTH %s %s", mech, base64.StdEncoding.EncodeToString(ir)); err != nil {
		return "", err
	}
	code, l, err = s.reply()
	if err != nil {
		return l, fmt.Errorf("waiting for the AUTH answer: %w", err)
	}
	s.send("QUIT")
	switch {
	case code == 235:
		return l, errLoggedIn
	case code >= 400:
		return l, nil
	}
	return l, fmt.Errorf("unexpected AUTH answer %d", code)
}

// Package simulate plays a password-guessing client against one mail server
// the administrator names, to see mailguard at work: it logs in with a wrong
// password over IMAP (LOGIN, RFC 9051), POP3 (USER/PASS, RFC 1939) or SMTP
// (EHLO, then AUTH PLAIN, RFC 4954), one connection per attempt, and reports
// when the server starts refusing.
//
// It speaks plaintext only (no TLS, no STARTTLS): point it at a listener
// that allows plaintext logins, such as a test instance or a port reachable
// only from loopback. It never resolves names: the target must be an IP
// address, so it cannot be aimed at anything but the address typed.
package simulate

import (
	"bufio"
	"context"
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

	"github.com/mailguard/mailguard/authhook"
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
	// RejectMsg is mailguard's dovecot reject message (zero:
	// authhook.DefaultRejectMsg): an answer carrying it, or IMAP's [ALERT],
	// is a refusal by policy rather than a wrong password.
	RejectMsg string
	Out       io.Writer // the report; nil: none
}

// Verdict classifies one attempt.
type Verdict string

const (
	Failed      Verdict = "failed"               // wrong password, as expected
	Refused     Verdict = "refused by policy"    // mailguard's refusal
	ConnRefused Verdict = "connection refused"   // a firewall reject (or nothing listens)
	TimedOut    Verdict = "connection timed out" // a firewall drop
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
		o.RejectMsg = authhook.DefaultRejectMsg
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return ap, nil
}

// Run makes o.Attempts failed logins and reports each to o.Out. It returns
// an error for invalid options, when the first attempt cannot connect (the
// server is not running), or when ctx is done.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	target, err := o.check()
	if err != nil {
		return res, err
	}
	from := ""
	if o.Source.IsValid() {
		from = " from " + o.Source.String()
	}
	fmt.Fprintf(o.Out, "simulating %d failed %s logins as %s to %s%s\n", o.Attempts, o.Protocol, o.User, target, from)
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
		a := o.attempt(ctx, target, password)
		a.N = n
		res.Attempts = append(res.Attempts, a)
		fmt.Fprintf(o.Out, "%4d %7.2fs  %-20s  %s\n", n, a.Elapsed.Seconds(), a.Verdict, a.Answer)
		if n == 1 && (a.Verdict == ConnRefused || a.Verdict == TimedOut) {
			return res, fmt.Errorf("simulate: %s: %s: is the server running there?", target, a.Verdict)
		}
		if a.Verdict.refusal() && res.RefusedAt == 0 {
			res.RefusedAt = n
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.RefusedAt > 0 {
		fmt.Fprintf(o.Out, "mailguard started refusing at attempt %d\n", res.RefusedAt)
	} else {
		fmt.Fprintln(o.Out, "never refused")
	}
	return res, nil
}

// attempt makes one login on a new connection.
func (o *Options) attempt(ctx context.Context, target netip.AddrPort, password string) Attempt {
	start := time.Now()
	d := net.Dialer{Timeout: o.Timeout}
	if o.Source.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(o.Source, 0))
	}
	dctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	c, err := d.DialContext(dctx, "tcp", target.String())
	if err != nil {
		a := Attempt{Elapsed: time.Since(start), Answer: err.Error(), Verdict: Error}
		var ne net.Error
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			a.Verdict = ConnRefused
		case errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil:
			a.Verdict = TimedOut
		}
		return a
	}
	defer c.Close()
	c.SetDeadline(start.Add(o.Timeout))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	s := &session{
		w: c,
		// Bound what a hostile server can make us read.
		r: bufio.NewReader(io.LimitReader(c, 1<<16)),
	}
	var answer string
	switch o.Protocol {
	case "imap":
		answer, err = s.imap(o.User, password)
	case "pop3":
		answer, err = s.pop3(o.User, password)
	case "smtp":
		answer, err = s.smtp(o.User, password)
	}
	a := Attempt{Elapsed: time.Since(start), Answer: answer}
	switch {
	case errors.Is(err, errLoggedIn):
		a.Verdict = Succeeded
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
	return a
}

// errLoggedIn marks an answer that accepted the password.
var errLoggedIn = errors.New("logged in")

// classify turns the final answer of a failed login into a verdict.
func (o *Options) classify(answer string) Verdict {
	if strings.Contains(answer, "[ALERT]") || strings.Contains(strings.ToLower(answer), strings.ToLower(o.RejectMsg)) {
		return Refused
	}
	return Failed
}

// session is one connection.
type session struct {
	r *bufio.Reader
	w io.Writer
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
	_, err := fmt.Fprintf(s.w, format+"\r\n", args...)
	return err
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
	if strings.Contains(greeting, "LOGINDISABLED") {
		return greeting, errors.New("the server disables LOGIN without TLS; simulate speaks plaintext only")
	}
	if err := s.send("a1 LOGIN %s %s", imapQuote(user), imapQuote(password)); err != nil {
		return "", err
	}
	for {
		l, err := s.line()
		if err != nil {
			return "", fmt.Errorf("waiting for the LOGIN answer: %w", err)
		}
		if strings.HasPrefix(l, "* ") {
			continue // untagged: capabilities, BYE before the tagged answer
		}
		if !strings.HasPrefix(l, "a1 ") {
			return l, errors.New("unexpected answer")
		}
		s.send("a2 LOGOUT")
		switch {
		case strings.Contains(l, "[PRIVACYREQUIRED]"):
			return l, errors.New("the server wants TLS for LOGIN; simulate speaks plaintext only")
		case strings.HasPrefix(l, "a1 NO"):
			return l, nil
		case strings.HasPrefix(l, "a1 OK"):
			return l, errLoggedIn
		}
		return l, errors.New("LOGIN rejected as a command")
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
	if err := s.send("USER %s", user); err != nil {
		return "", err
	}
	l, err := s.line()
	if err != nil {
		return "", fmt.Errorf("waiting for the USER answer: %w", err)
	}
	if !strings.HasPrefix(l, "+OK") {
		return l, errors.New("USER refused (plaintext logins may need TLS; simulate speaks plaintext only)")
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
	for {
		l, err := s.line()
		if err != nil {
			return 0, "", err
		}
		var code int
		if len(l) < 3 {
			return 0, l, errors.New("malformed SMTP reply")
		}
		if _, err := fmt.Sscanf(l[:3], "%d", &code); err != nil {
			return 0, l, errors.New("malformed SMTP reply")
		}
		if len(l) > 3 && l[3] == '-' {
			continue
		}
		return code, l, nil
	}
}

func (s *session) smtp(user, password string) (string, error) {
	code, l, err := s.reply()
	if err != nil {
		return l, fmt.Errorf("reading the greeting: %w", err)
	}
	if code != 220 {
		return l, errors.New("unexpected greeting")
	}
	if err := s.send("EHLO simulate.invalid"); err != nil {
		return "", err
	}
	plain := false
	for {
		l, err := s.line()
		if err != nil {
			return "", fmt.Errorf("waiting for the EHLO answer: %w", err)
		}
		if !strings.HasPrefix(l, "250") {
			return l, errors.New("EHLO refused")
		}
		if f := strings.Fields(strings.ToUpper(l[min(len(l), 4):])); len(f) > 0 && f[0] == "AUTH" {
			for _, m := range f[1:] {
				plain = plain || m == sasl.Plain
			}
		}
		if len(l) == 3 || l[3] != '-' {
			break
		}
	}
	if !plain {
		s.send("QUIT")
		return "", errors.New("the server offers no AUTH PLAIN (plaintext AUTH may need TLS; simulate speaks plaintext only)")
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

package web

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/pquerna/otp"

	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/totp"
)

//go:embed templates
var files embed.FS

var pages = map[string]*template.Template{}

func init() {
	for _, name := range []string{"login", "approve", "approved", "enrol", "enrolled", "error"} {
		pages[name] = template.Must(template.ParseFS(files, "templates/layout.html", "templates/signout.html", "templates/"+name+".html"))
	}
}

// Limits of what a form may carry.
const (
	maxLogin    = 256
	maxCode     = 12
	maxToken    = 128
	maxApproved = 64
	// qrSize is the QR code's size in pixels (on the page and, about, in
	// the PNG).
	qrSize = 256
)

// page is what a template shows.
type page struct {
	Title, Error, CSRF string
	// Root is the relative path from the page to the site's start.
	Root string
	// The login form.
	Login    string
	MaxLogin int
	// The approval pages.
	User     string
	Pending  []choice
	Browser  *choice
	TrustFor string
	Approved []string
	// The enrolment page.
	QR, Secret string
	QRSize     int
}

// choice is a network the user may approve.
type choice struct{ Value, Label string }

func (s *Server) render(w http.ResponseWriter, status int, name string, p page) {
	var b bytes.Buffer
	p.MaxLogin, p.QRSize = maxLogin, qrSize
	if err := pages[name].ExecuteTemplate(&b, "layout.html", p); err != nil {
		s.log.Error("totp web: template", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// fail answers with an error page.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	s.render(w, status, "error", page{Title: http.StatusText(status), Error: msg, Root: rootOf(r)})
}

// rootOf is the relative path from r's page to the start page (links are
// relative so that the proxy may publish the site under any path).
func rootOf(r *http.Request) string {
	n := strings.Count(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if n == 0 {
		return "./"
	}
	return strings.Repeat("../", n)
}

func (s *Server) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), listen.OrDefault(s.Timeout, DefaultTimeout))
}

// unavailable answers a Service failure.
func (s *Server) unavailable(w http.ResponseWriter, r *http.Request, op string, err error) {
	s.warn("service-"+op, "totp web: service failed", "op", op, "err", err)
	s.fail(w, r, http.StatusServiceUnavailable, "The service is unavailable at the moment. Please try again in a minute.")
}

const (
	msgRefused  = "The login or the code was not accepted. Check the login and enter the code your app shows now (each code works once)."
	msgTooMany  = "Too many wrong codes. Wait a few minutes, then try again with the code your app shows then."
	msgExpired  = "The form expired or your browser refused this site's cookie. Please try again."
	msgBadEnrol = "The code was not accepted. Check that the app shows this account and enter the code it shows now."
)

// refusal returns what to tell the user about a Service error that is
// their doing, or "" for a failure. msg is the answer to a wrong code.
func refusal(err error, msg string) string {
	switch {
	case errors.Is(err, totp.ErrRefused):
		return msgTooMany
	case errors.Is(err, totp.ErrWrongCode), errors.Is(err, totp.ErrReplay), errors.Is(err, totp.ErrNotEnrolled):
		return msg
	}
	return ""
}

// home shows the login form, or the refused logins once signed in.
func (s *Server) home(w http.ResponseWriter, r *http.Request) {
	if sess, ok := s.signedIn(r); ok {
		s.approvePage(w, r, sess, http.StatusOK, "")
		return
	}
	s.loginPage(w, r, http.StatusOK, "", "")
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request, status int, login, errMsg string) {
	s.render(w, status, "login", page{
		Title: "Approve a mail login", Error: errMsg, Root: "./", Login: login,
		CSRF: s.csrfToken(s.csrfNonce(w, r), ""),
	})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.tooLarge(w, r, err)
		return
	}
	login := strings.TrimSpace(r.PostFormValue("login"))
	if !s.csrfOK(r, "") {
		s.warn("csrf", "totp web: form without a valid CSRF token", "form", "login")
		s.loginPage(w, r, http.StatusForbidden, login, msgExpired)
		return
	}
	code := digits(r.PostFormValue("code"))
	if login == "" || len(login) > maxLogin || code == "" || len(code) > maxCode {
		s.loginPage(w, r, http.StatusBadRequest, clip(login), "Enter your login and the code your app shows now.")
		return
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	if err := s.Service.Verify(ctx, login, code, clientOf(r).addr); err != nil {
		if msg := refusal(err, msgRefused); msg != "" {
			s.loginPage(w, r, http.StatusForbidden, login, msg)
			return
		}
		s.unavailable(w, r, "verify", err)
		return
	}
	if old := s.cookie(r, sessionCookie); old != "" {
		s.sessions.end(old)
	}
	sess := s.sessions.add(login, s.now())
	s.setCookie(w, clientOf(r), sessionCookie, sess.id, s.sessions.ttl)
	seeStart(w)
}

// approvePage lists the signed-in user's refused logins and the browser's
// own network.
func (s *Server) approvePage(w http.ResponseWriter, r *http.Request, sess session, status int, errMsg string) {
	pending, browser, err := s.choices(r, sess)
	if err != nil {
		s.unavailable(w, r, "pending", err)
		return
	}
	s.render(w, status, "approve", page{
		Title: "Approve mail logins", Error: errMsg, Root: "./", User: sess.user,
		Pending: pending, Browser: browser, TrustFor: duration(s.TrustTTL),
		CSRF: s.csrfToken(s.csrfNonce(w, r), sess.id),
	})
}

// choices returns what sess's user may approve now.
func (s *Server) choices(r *http.Request, sess session) (pending []choice, browser *choice, err error) {
	ctx, cancel := s.ctx(r)
	defer cancel()
	ps, err := s.Service.Pending(ctx, sess.user)
	if err != nil {
		return nil, nil, err
	}
	now := s.now()
	for _, p := range ps {
		if !p.Prefix.IsValid() {
			continue
		}
		pending = append(pending, choice{
			Value: p.Prefix.Masked().String(),
			Label: fmt.Sprintf("%s from %s, %s", protocol(p.Protocol), netLabel(p), ago(now.Sub(p.At))),
		})
	}
	if a := clientOf(r).addr; a.IsValid() {
		if p := s.Service.PrefixOf(a); p.IsValid() {
			label := "This browser's address, " + a.String()
			if !p.IsSingleIP() {
				label += " (approves its network " + p.Masked().String() + ")"
			}
			browser = &choice{Value: p.Masked().String(), Label: label}
		}
	}
	return pending, browser, nil
}

func (s *Server) approve(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.tooLarge(w, r, err)
		return
	}
	sess, ok := s.signedIn(r)
	if !ok {
		s.loginPage(w, r, http.StatusForbidden, "", "Your session ended. Enter a new code to continue.")
		return
	}
	if !s.csrfOK(r, sess.id) {
		s.warn("csrf", "totp web: form without a valid CSRF token", "form", "approve")
		s.approvePage(w, r, sess, http.StatusForbidden, msgExpired)
		return
	}
	pending, browser, err := s.choices(r, sess)
	if err != nil {
		s.unavailable(w, r, "pending", err)
		return
	}
	// Only what the page offered can be approved; a network may cover
	// several refused logins.
	offered := map[string][]string{}
	for _, c := range pending {
		offered[c.Value] = append(offered[c.Value], c.Label)
	}
	if browser != nil {
		offered[browser.Value] = append(offered[browser.Value], browser.Label)
	}
	picked := r.PostForm["approve"]
	if len(picked) == 0 {
		s.approvePage(w, r, sess, http.StatusBadRequest, "Choose at least one login to approve.")
		return
	}
	if len(picked) > maxApproved {
		picked = picked[:maxApproved]
	}
	var prefixes []netip.Prefix
	var labels []string
	seen := map[string]bool{}
	for _, v := range picked {
		covered, ok := offered[v]
		if !ok {
			s.approvePage(w, r, sess, http.StatusBadRequest, "That login is no longer waiting for approval; choose from the list below.")
			return
		}
		if seen[v] {
			continue
		}
		seen[v] = true
		prefixes = append(prefixes, netip.MustParsePrefix(v))
		labels = append(labels, covered...)
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	for _, p := range prefixes {
		if err := s.Service.Trust(ctx, sess.user, p, s.TrustTTL); err != nil {
			s.unavailable(w, r, "trust", err)
			return
		}
		s.log.Debug("totp web: network approved", "user", sess.user, "prefix", p)
	}
	s.render(w, http.StatusOK, "approved", page{
		Title: "Approved", Root: "./", User: sess.user, Approved: labels, TrustFor: duration(s.TrustTTL),
		CSRF: s.csrfToken(s.csrfNonce(w, r), sess.id),
	})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.tooLarge(w, r, err)
		return
	}
	if sess, ok := s.signedIn(r); ok {
		if !s.csrfOK(r, sess.id) {
			s.approvePage(w, r, sess, http.StatusForbidden, msgExpired)
			return
		}
		s.sessions.end(sess.id)
	}
	s.setCookie(w, clientOf(r), sessionCookie, "", -time.Second)
	seeStart(w)
}

// enrolment returns the token's user and key, or answers the request.
func (s *Server) enrolment(w http.ResponseWriter, r *http.Request) (token, user string, key *otp.Key, ok bool) {
	token = r.PathValue("token")
	if token == "" || len(token) > maxToken {
		s.badLink(w, r)
		return "", "", nil, false
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	user, u, err := s.Service.Enrolment(ctx, token)
	if errors.Is(err, totp.ErrNoLink) {
		s.badLink(w, r)
		return "", "", nil, false
	}
	if err == nil {
		key, err = otp.NewKeyFromURL(u)
	}
	if err != nil {
		s.unavailable(w, r, "enrolment", err)
		return "", "", nil, false
	}
	return token, user, key, true
}

func (s *Server) badLink(w http.ResponseWriter, r *http.Request) {
	s.fail(w, r, http.StatusNotFound, "This enrolment link is not valid: it was used already, it expired, or it was copied incompletely. Ask your mail administrator for a new one.")
}

func (s *Server) enrolPage(w http.ResponseWriter, r *http.Request) {
	token, user, key, ok := s.enrolment(w, r)
	if !ok {
		return
	}
	s.showEnrol(w, r, http.StatusOK, token, user, key, "")
}

func (s *Server) showEnrol(w http.ResponseWriter, r *http.Request, status int, token, user string, key *otp.Key, errMsg string) {
	s.render(w, status, "enrol", page{
		Title: "Turn on two-factor sign-in", Error: errMsg, Root: rootOf(r), User: user,
		QR: token + "/qr.png", Secret: group(key.Secret()),
		CSRF: s.csrfToken(s.csrfNonce(w, r), ""),
	})
}

func (s *Server) enrolQR(w http.ResponseWriter, r *http.Request) {
	_, _, key, ok := s.enrolment(w, r)
	if !ok {
		return
	}
	b, err := totp.PNG(key.URL(), qrSize)
	if err != nil {
		s.unavailable(w, r, "qr", err)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Write(b)
}

func (s *Server) enrolConfirm(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		s.tooLarge(w, r, err)
		return
	}
	token, user, key, ok := s.enrolment(w, r)
	if !ok {
		return
	}
	if !s.csrfOK(r, "") {
		s.warn("csrf", "totp web: form without a valid CSRF token", "form", "enrol")
		s.showEnrol(w, r, http.StatusForbidden, token, user, key, msgExpired)
		return
	}
	code := digits(r.PostFormValue("code"))
	if code == "" || len(code) > maxCode {
		s.showEnrol(w, r, http.StatusBadRequest, token, user, key, "Enter the code your app shows now.")
		return
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	if err := s.Service.ConfirmEnrolment(ctx, token, code, clientOf(r).addr); err != nil {
		if msg := refusal(err, msgBadEnrol); msg != "" {
			s.showEnrol(w, r, http.StatusForbidden, token, user, key, msg)
			return
		}
		if errors.Is(err, totp.ErrNoLink) {
			s.badLink(w, r) // confirmed meanwhile in another tab
			return
		}
		s.unavailable(w, r, "confirm", err)
		return
	}
	s.render(w, http.StatusOK, "enrolled", page{Title: "Two-factor sign-in is on", Root: rootOf(r), User: user})
}

func (s *Server) style(w http.ResponseWriter, r *http.Request) {
	b, _ := files.ReadFile("templates/style.css")
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "max-age=3600")
	w.Write(b)
}

func (s *Server) tooLarge(w http.ResponseWriter, r *http.Request, err error) {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		s.warn("body", "totp web: request body too large", "limit", mb.Limit)
		s.fail(w, r, http.StatusRequestEntityTooLarge, "The form was too large.")
		return
	}
	s.fail(w, r, http.StatusBadRequest, "The form could not be read.")
}

// seeStart sends the browser to the start page. The Location is
// relative to the URL the browser sees, which may have a path the proxy
// strips (http.Redirect would resolve it against the stripped one).
func seeStart(w http.ResponseWriter) {
	w.Header().Set("Location", "./")
	w.WriteHeader(http.StatusSeeOther)
}

// digits returns the code without the spaces people type into it.
func digits(code string) string {
	return strings.Join(strings.Fields(code), "")
}

func clip(s string) string {
	if len(s) > maxLogin {
		return s[:maxLogin]
	}
	return s
}

// group writes a base32 secret in groups of four, as apps show it.
func group(secret string) string {
	var b strings.Builder
	for i, r := range secret {
		if i > 0 && i%4 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func protocol(p string) string {
	if p == "" {
		return "A login"
	}
	if len(p) > 16 {
		p = p[:16]
	}
	return strings.ToUpper(p)
}

// netLabel shows where a pending login came from: its address when known,
// else its network.
func netLabel(p Pending) string {
	switch {
	case p.Addr.IsValid():
		return p.Addr.String()
	case p.Prefix.IsSingleIP():
		return p.Prefix.Addr().String()
	default:
		return p.Prefix.Masked().String()
	}
}

// ago says how long ago something was, in words.
func ago(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return plural(int(d/time.Minute), "minute") + " ago"
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour") + " ago"
	default:
		return plural(int(d/(24*time.Hour)), "day") + " ago"
	}
}

// duration says how long an approval lasts, in words ("" for zero).
func duration(d time.Duration) string {
	switch {
	case d <= 0:
		return ""
	case d%(24*time.Hour) == 0:
		return plural(int(d/(24*time.Hour)), "day")
	case d%time.Hour == 0:
		return plural(int(d/time.Hour), "hour")
	default:
		return plural(int(d.Round(time.Minute)/time.Minute), "minute")
	}
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

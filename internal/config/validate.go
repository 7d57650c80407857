package config

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/logwatch/filter"
)

// Ports maps the service names jails may use to TCP ports.
var Ports = map[string]uint16{
	"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465,
	"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995, "sieve": 4190, "managesieve": 4190,
}

// ParsePort accepts a service name from Ports or a number.
func ParsePort(s string) (uint16, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if p, ok := Ports[s]; ok {
		return p, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("unknown port %q (a number or one of %s)", s, strings.Join(portNames(), ", "))
	}
	return uint16(n), nil
}

func portNames() []string {
	var n []string
	for k := range Ports {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// ParseIgnore parses ignoreip entries: addresses or CIDRs.
func ParseIgnore(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or CIDR", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// join lists names for a message: "a, b, c".
func join[T ~string](names []T) string {
	s := make([]string, len(names))
	for i, n := range names {
		s[i] = string(n)
	}
	return strings.Join(s, ", ")
}

// alternatives lists names for a message: "a, b or c".
func alternatives[T ~string](names []T) string {
	s := join(names)
	if i := strings.LastIndex(s, ", "); i >= 0 {
		s = s[:i] + " or " + s[i+2:]
	}
	return s
}

// validate checks every rule; each rule has a bad config under
// testdata/bad/ with the exact error it must produce.
func (c *Config) validate() Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, &KeyError{Key: key, Msg: fmt.Sprintf(format, a...)})
	}
	oneLine := func(key, v string) {
		if strings.TrimSpace(v) == "" || strings.ContainsAny(v, "\r\n") {
			bad(key, "must be one line of text")
		}
	}
	positive := func(key string, d Duration) {
		if d.D() <= 0 {
			bad(key, "must be positive")
		}
	}
	atLeast1 := func(key string, n int, why string) {
		if n < 1 {
			bad(key, "must be at least 1, not %d%s", n, why)
		}
	}

	if c.StateDir == "" {
		bad("state_dir", "must not be empty")
	}
	if _, err := ParseIgnore(c.IgnoreIP); err != nil {
		bad("ignoreip", "%v", err)
	}
	if c.Prefix.IPv4 < 8 || c.Prefix.IPv4 > 32 {
		bad("prefix.ipv4", "must be between 8 and 32, not %d", c.Prefix.IPv4)
	}
	if c.Prefix.IPv6 < 16 || c.Prefix.IPv6 > 128 {
		bad("prefix.ipv6", "must be between 16 and 128, not %d", c.Prefix.IPv6)
	}
	positive("known_device_ttl", c.KnownDeviceTTL)

	if strings.TrimSpace(c.Postfix.Listen) == "" {
		bad("postfix.listen", "must not be empty (host:port or unix:/path)")
	}
	oneLine("postfix.reject_action", c.Postfix.RejectAction)
	oneLine("postfix.defer_action", c.Postfix.DeferAction)
	positive("postfix.idle_timeout", c.Postfix.IdleTimeout)
	atLeast1("postfix.max_conns", c.Postfix.MaxConns, " (0 or less would close every Postfix connection)")

	if strings.TrimSpace(c.Dovecot.Listen) == "" {
		bad("dovecot.listen", "must not be empty (host:port or unix:/path)")
	}
	if strings.ContainsAny(c.Dovecot.APIHeader, "\r\n") {
		bad("dovecot.api_header", "must be one line")
	}
	if c.Dovecot.InsecureNoAuth && strings.TrimSpace(c.Dovecot.APIHeader) != "" {
		bad("dovecot.insecure_no_auth", "true contradicts dovecot.api_header being set: unset one of them")
	}
	oneLine("dovecot.reject_msg_user", c.Dovecot.RejectMsgUser)
	if c.Dovecot.Tarpit.Max.D() > 8*time.Second {
		bad("dovecot.tarpit.max", "%s is too long: Postfix waits about 10s for Dovecot SASL; keep it at 8s or less", c.Dovecot.Tarpit.Max)
	}
	atLeast1("dovecot.tarpit.start", c.Dovecot.Tarpit.Start, "")
	atLeast1("dovecot.max_conns", c.Dovecot.MaxConns, " (0 or less would refuse every Dovecot connection)")
	positive("dovecot.timeout", c.Dovecot.Timeout)

	if !slices.Contains([]string{"memory", "redis"}, c.Store.Backend) {
		bad("store.backend", "must be memory or redis, not %q", c.Store.Backend)
	}
	if !slices.Contains([]string{"open", "closed"}, c.Store.FailMode) {
		bad("store.fail_mode", "must be open or closed, not %q", c.Store.FailMode)
	}
	if c.Store.Timeout.D() <= 0 || c.Store.Timeout.D() > 5*time.Second {
		bad("store.timeout", "must be between 1ms and 5s (Postfix and Dovecot must never wait on us)")
	}
	r := c.Store.Redis
	if r.URL != "" {
		if _, err := url.Parse(r.URL); err != nil {
			// url.Parse's error quotes the URL, password included.
			bad("store.redis.url", "%s is not a URL: redis://[user:password@]host:port/db; percent-encode any of @ : / ? # %% in the password", maskURL(r.URL))
		}
	}
	if c.Store.Backend == "redis" {
		switch {
		case r.URL != "" && (len(r.Addrs) > 0 || r.MasterName != ""):
			bad("store.redis.url", "set store.redis.url or store.redis.addrs (with master_name for Sentinel), not both")
		case r.MasterName != "" && len(r.Addrs) == 0:
			bad("store.redis.master_name", "needs the Sentinels in store.redis.addrs")
		case r.URL == "" && len(r.Addrs) == 0:
			bad("store.redis.url", "store.backend is redis: set store.redis.url or store.redis.addrs")
		}
	}
	if r.PoolSize < 0 {
		bad("store.redis.pool_size", "must be 0 (4 × GOMAXPROCS, at least 10) or more, not %d", r.PoolSize)
	}

	if !slices.Contains(firewall.Names(), c.Firewall.Backend) {
		bad("firewall.backend", "must be %s, not %q", alternatives(firewall.Names()), c.Firewall.Backend)
	}
	if c.Firewall.ReconcileInterval.D() < time.Second {
		bad("firewall.reconcile_interval", "must be at least 1s")
	}
	if c.Admin.Socket == "" {
		bad("admin.socket", "must not be empty")
	}
	if c.Recidive.Factor < 1 {
		bad("recidive.factor", "must be at least 1, not %v", c.Recidive.Factor)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, strings.ToLower(c.Log.Level)) {
		bad("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		bad("log.format", "must be text or json, not %q", c.Log.Format)
	}

	if c.API.TokensFile != "" && strings.TrimSpace(c.API.Listen) == "" {
		bad("api.listen", "must not be empty when api.tokens_file is set (host:port or unix:/path)")
	}
	if (c.API.TLSCert == "") != (c.API.TLSKey == "") {
		bad("api.tls_cert", "set api.tls_cert and api.tls_key together (or neither, for plain HTTP)")
	}
	atLeast1("api.max_conns", c.API.MaxConns, " (0 or less would refuse every API connection)")
	if n := c.Safety.SharedAddress.MinUsers; n < 0 || n == 1 {
		bad("safety.shared_address.min_users", "must be 0 (off) or at least 2, not %d (1 would spare every address anyone logged in from)", n)
	}
	positive("safety.shared_address.window", c.Safety.SharedAddress.Window)
	if n := c.Safety.MaxBansPerMinute; n < 0 {
		bad("safety.max_bans_per_minute", "must be 0 (off) or more, not %d", n)
	}
	prev := c.Prefix.IPv6
	for i, st := range c.Prefix.IPv6Widen {
		if st.Bits < 16 || st.Bits >= prev {
			bad("prefix.ipv6_widen", "step %d: bits must be at least 16 and shorter than the step before (prefix.ipv6 %d for the first), not %d", i+1, c.Prefix.IPv6, st.Bits)
		}
		prev = st.Bits
		if st.Bans < 2 {
			bad("prefix.ipv6_widen", "step %d: bans must be at least 2, not %d (1 would widen every ban)", i+1, st.Bans)
		}
		if st.Window <= 0 {
			bad("prefix.ipv6_widen", "step %d: window must be positive", i+1)
		}
	}
	c.validateTOTP(bad, oneLine, positive)

	if !audit.UserMode(c.Audit.User).Valid() {
		bad("audit.user", "must be %s, not %q", alternatives(audit.UserModes()), c.Audit.User)
	}
	if _, err := audit.ParseSize(c.Audit.FileMaxSize); err != nil {
		bad("audit.file_max_size", "%v", err)
	}
	atLeast1("audit.file_keep", c.Audit.FileKeep, " (the rotated files kept)")
	if f := c.Audit.File; f != "" && !filepath.IsAbs(f) {
		bad("audit.file", "must be an absolute path, not %q", f)
	}
	if strings.ContainsAny(c.Audit.Node, " \t\r\n") {
		bad("audit.node", "must be one word (a node name), not %q", c.Audit.Node)
	}

	events := guard.Events()
	for _, n := range slices.Sorted(maps.Keys(c.Jails)) {
		j := c.Jails[n]
		k := "jails." + n
		if n == guard.ManualJail {
			bad(k, "the name %s is reserved for bans made with mailguard ban", guard.ManualJail)
		}
		if !j.Enabled {
			continue
		}
		if len(j.Events) == 0 && len(j.Logs) == 0 {
			bad(k+".events", "must name at least one of %s (or the jail must have logs)", strings.Join(events, ", "))
		}
		for _, e := range j.Events {
			if !slices.Contains(events, e) {
				bad(k+".events", "unknown event %q (one of %s)", e, strings.Join(events, ", "))
			}
		}
		key := guard.Key(j.Key)
		if !key.Valid() {
			bad(k+".key", "must be one of %s, not %q", join(guard.Keys()), j.Key)
		}
		atLeast1(k+".maxretry", j.MaxRetry, "")
		positive(k+".findtime", j.FindTime)
		rateOnly := len(j.Logs) == 0 && len(j.Events) > 0 && !slices.ContainsFunc(j.Events, func(e string) bool { return e != guard.EventRecipient })
		if j.BanTime.D() <= 0 && !rateOnly {
			bad(k+".bantime", "must be positive (only a jail counting %s alone may have no bantime: it defers while over)", guard.EventRecipient)
		}
		action := guard.Action(j.Action)
		if !action.Valid() {
			bad(k+".action", "must be %s, not %q", alternatives(guard.Actions()), j.Action)
		}
		if action == guard.ActionFirewall && len(j.Ports) == 0 {
			bad(k+".ports", "a firewall jail needs ports")
		}
		if action == guard.ActionFirewall && key.Valid() && !key.ByAddress() {
			bad(k+".action", "a jail keyed by %s cannot ban in the firewall; use %s", j.Key, guard.ActionRefuse)
		}
		for _, p := range j.Ports {
			if _, err := ParsePort(p); err != nil {
				bad(k+".ports", "%v", err)
			}
		}
		for _, a := range j.Apps {
			if !guard.ValidApp(a) {
				bad(k+".apps", "%q is not an app name: 1 to 64 of a-z, 0-9, '.', '_', '-'", a)
			}
		}
		if j.DistinctPasswords && len(j.Logs) > 0 {
			bad(k+".logs", "a jail counting distinct_passwords cannot take logs: a log line has no password hash")
		}
		for i, l := range j.Logs {
			if msg := l.problem(); msg != "" {
				bad(k+".logs", "entry %d: %s", i+1, msg)
			}
		}
	}
	positive("logwatch.backlog", c.Logwatch.Backlog)
	return errs
}

// problem says what is wrong with a log source, "" if nothing. The filter
// is loaded, so a filter file that does not parse, or a mode it lacks, is
// found by check-config rather than at start.
func (l LogSource) problem() string {
	switch {
	case l.Path == "" && l.Journal == "":
		return "needs a path (a log file) or a journal (journalctl matches, e.g. _SYSTEMD_UNIT=postfix@-.service)"
	case l.Path != "" && !filepath.IsAbs(l.Path):
		return fmt.Sprintf("path %q must be absolute", l.Path)
	case strings.TrimSpace(l.Filter) == "":
		return fmt.Sprintf("needs a filter: a shipped one (%s) or the path of a fail2ban filter file", strings.Join(filter.Shipped(), ", "))
	}
	for _, m := range strings.Fields(l.Journal) {
		if m != "+" && !strings.Contains(m, "=") {
			return fmt.Sprintf("journal match %q is not FIELD=value (or +)", m)
		}
	}
	if _, err := filter.Open(l.Filter, l.Mode, nil); err != nil {
		if errors.Is(err, fs.ErrNotExist) && !strings.ContainsAny(l.Filter, "/.") {
			return fmt.Sprintf("no shipped filter %q (one of %s, or the path of a fail2ban filter file)", l.Filter, strings.Join(filter.Shipped(), ", "))
		}
		return err.Error()
	}
	return ""
}

// validateTOTP checks the totp.* keys (each rule has its bad file too).
func (c *Config) validateTOTP(bad func(key, format string, a ...any), oneLine func(key, v string), positive func(key string, d Duration)) {
	t := c.TOTP
	if t.TrustPrefix.IPv4 < 8 || t.TrustPrefix.IPv4 > 32 {
		bad("totp.trust_prefix.ipv4", "must be between 8 and 32, not %d", t.TrustPrefix.IPv4)
	}
	if t.TrustPrefix.IPv6 < 16 || t.TrustPrefix.IPv6 > 128 {
		bad("totp.trust_prefix.ipv6", "must be between 16 and 128, not %d", t.TrustPrefix.IPv6)
	}
	positive("totp.trust_ttl", t.TrustTTL)
	positive("totp.pending_ttl", t.PendingTTL)
	oneLine("totp.reject_msg", t.RejectMsg)
	if !strings.Contains(t.RejectMsg, "{url}") {
		bad("totp.reject_msg", "must name the approval page with {url} (replaced by totp.url)")
	}
	oneLine("totp.issuer", t.Issuer)
	if strings.Contains(t.Issuer, ":") {
		bad("totp.issuer", "must not contain ':' (it separates issuer and login in authenticator apps)")
	}
	if _, err := ParseIgnore(t.TrustedProxies); err != nil {
		bad("totp.trusted_proxies", "%v", err)
	}
	if !t.Enabled {
		return
	}
	u, err := url.Parse(t.URL)
	if t.URL == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		bad("totp.url", "totp.enabled is true: set the approval page's public URL (https://mail.example.org/totp), which the reject message names")
	}
	if strings.TrimSpace(t.Listen) == "" {
		bad("totp.listen", "totp.enabled is true: must not be empty (host:port or unix:/path)")
	}
}

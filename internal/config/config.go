// Package config is mailguard's typed configuration: built-in defaults, a YAML
// file, MAILGUARD_* environment variables and --set flags, decoded strictly
// (an unknown key is an error naming it) and validated as a whole.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

// DefaultFile is read when present and no --config is given.
const DefaultFile = "/etc/mailguard/mailguard.yaml"

// Config is the effective configuration. Field tags are the config keys.
type Config struct {
	StateDir       string          `mapstructure:"state_dir" yaml:"state_dir"`
	IgnoreIP       []string        `mapstructure:"ignoreip" yaml:"ignoreip"`
	Prefix         Prefix          `mapstructure:"prefix" yaml:"prefix"`
	KnownDeviceTTL Duration        `mapstructure:"known_device_ttl" yaml:"known_device_ttl"`
	Postfix        Postfix         `mapstructure:"postfix" yaml:"postfix"`
	Dovecot        Dovecot         `mapstructure:"dovecot" yaml:"dovecot"`
	Store          Store           `mapstructure:"store" yaml:"store"`
	Firewall       Firewall        `mapstructure:"firewall" yaml:"firewall"`
	Admin          Admin           `mapstructure:"admin" yaml:"admin"`
	Metrics        Metrics         `mapstructure:"metrics" yaml:"metrics"`
	Recidive       Recidive        `mapstructure:"recidive" yaml:"recidive"`
	Log            Log             `mapstructure:"log" yaml:"log"`
	Jails          map[string]Jail `mapstructure:"jails" yaml:"jails"`
}

type Prefix struct {
	IPv4 int `mapstructure:"ipv4" yaml:"ipv4"`
	IPv6 int `mapstructure:"ipv6" yaml:"ipv6"`
}

type Postfix struct {
	Listen       string   `mapstructure:"listen" yaml:"listen"`
	RejectAction string   `mapstructure:"reject_action" yaml:"reject_action"`
	DeferAction  string   `mapstructure:"defer_action" yaml:"defer_action"`
	IdleTimeout  Duration `mapstructure:"idle_timeout" yaml:"idle_timeout"`
	MaxConns     int      `mapstructure:"max_conns" yaml:"max_conns"`
}

type Dovecot struct {
	Listen    string   `mapstructure:"listen" yaml:"listen"`
	APIHeader string   `mapstructure:"api_header" yaml:"api_header"`
	RejectMsg string   `mapstructure:"reject_msg" yaml:"reject_msg"`
	Tarpit    Tarpit   `mapstructure:"tarpit" yaml:"tarpit"`
	MaxConns  int      `mapstructure:"max_conns" yaml:"max_conns"`
	Timeout   Duration `mapstructure:"timeout" yaml:"timeout"`
}

type Tarpit struct {
	Start int      `mapstructure:"start" yaml:"start"`
	Base  Duration `mapstructure:"base" yaml:"base"`
	Max   Duration `mapstructure:"max" yaml:"max"`
}

type Store struct {
	Backend  string   `mapstructure:"backend" yaml:"backend"`
	FailMode string   `mapstructure:"fail_mode" yaml:"fail_mode"`
	Timeout  Duration `mapstructure:"timeout" yaml:"timeout"`
	Redis    Redis    `mapstructure:"redis" yaml:"redis"`
}

type Redis struct {
	URL               string   `mapstructure:"url" yaml:"url"`
	Addrs             []string `mapstructure:"addrs" yaml:"addrs"`
	MasterName        string   `mapstructure:"master_name" yaml:"master_name"`
	Username          string   `mapstructure:"username" yaml:"username"`
	Password          string   `mapstructure:"password" yaml:"password"`
	PoolSize          int      `mapstructure:"pool_size" yaml:"pool_size"`
	DialTimeout       Duration `mapstructure:"dial_timeout" yaml:"dial_timeout"`
	ReadTimeout       Duration `mapstructure:"read_timeout" yaml:"read_timeout"`
	WriteTimeout      Duration `mapstructure:"write_timeout" yaml:"write_timeout"`
	Prefix            string   `mapstructure:"prefix" yaml:"prefix"`
	ReconcileInterval Duration `mapstructure:"reconcile_interval" yaml:"reconcile_interval"`
}

type Firewall struct {
	Backend           string   `mapstructure:"backend" yaml:"backend"`
	ReconcileInterval Duration `mapstructure:"reconcile_interval" yaml:"reconcile_interval"`
}

type Admin struct {
	Socket string `mapstructure:"socket" yaml:"socket"`
}

type Metrics struct {
	Listen string `mapstructure:"listen" yaml:"listen"`
}

type Recidive struct {
	Window  Duration `mapstructure:"window" yaml:"window"`
	Factor  float64  `mapstructure:"factor" yaml:"factor"`
	MaxTime Duration `mapstructure:"maxtime" yaml:"maxtime"`
}

type Log struct {
	Level  string `mapstructure:"level" yaml:"level"`
	Format string `mapstructure:"format" yaml:"format"`
}

// Jail is one jail's settings (DESIGN.md §3).
type Jail struct {
	Enabled           bool     `mapstructure:"enabled" yaml:"enabled"`
	Events            []string `mapstructure:"events" yaml:"events"`
	Protocols         []string `mapstructure:"protocols" yaml:"protocols"`
	Key               string   `mapstructure:"key" yaml:"key"`
	MaxRetry          int      `mapstructure:"maxretry" yaml:"maxretry"`
	FindTime          Duration `mapstructure:"findtime" yaml:"findtime"`
	BanTime           Duration `mapstructure:"bantime" yaml:"bantime"`
	Action            string   `mapstructure:"action" yaml:"action"`
	Ports             []string `mapstructure:"ports" yaml:"ports"`
	DistinctPasswords bool     `mapstructure:"distinct_passwords" yaml:"distinct_passwords"`
}

// Duration is a time.Duration that decodes from Go syntax ("10m", "168h") or
// from a plain integer of seconds (fail2ban's habit: bantime = 3600).
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText prints the Go syntax, for check-config.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// ParseDuration accepts "10m", "1h30m", "600" (seconds) and "0".
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("invalid duration %q: negative", s)
		}
		return Duration(time.Duration(n) * time.Second), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (use 10m, 1h, 168h or seconds)", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("invalid duration %q: negative", s)
	}
	return Duration(d), nil
}

// Defaults returns the built-in configuration: what `mailguard serve` runs
// with no file. Paths depend on whether we run as root.
func Defaults() Config {
	stateDir, socket := "/var/lib/mailguard", "/run/mailguard/admin.sock"
	if os.Geteuid() != 0 {
		stateDir, socket = UserDirs()
	}
	mailPortsIMAP := []string{"imap", "imaps", "pop3", "pop3s", "submission", "smtps"}
	return Config{
		StateDir:       stateDir,
		IgnoreIP:       []string{"127.0.0.0/8", "::1"},
		Prefix:         Prefix{IPv4: 32, IPv6: 64},
		KnownDeviceTTL: Duration(30 * 24 * time.Hour),
		Postfix: Postfix{
			Listen:       "127.0.0.1:10028",
			RejectAction: "421 4.7.1 Too many failed attempts from your address, try again later",
			DeferAction:  "DEFER_IF_PERMIT 4.7.1 Sending rate limit exceeded, try again later",
			IdleTimeout:  Duration(6 * time.Minute),
			MaxConns:     1000,
		},
		Dovecot: Dovecot{
			Listen:    "127.0.0.1:10029",
			RejectMsg: "Too many failed logins from your network. Try again later or contact your mail administrator.",
			Tarpit:    Tarpit{Start: 3, Base: Duration(time.Second), Max: Duration(5 * time.Second)},
			MaxConns:  1000,
			Timeout:   Duration(5 * time.Second),
		},
		Store: Store{
			Backend: "memory", FailMode: "open", Timeout: Duration(500 * time.Millisecond),
			Redis: Redis{
				Prefix: "mailguard:", DialTimeout: Duration(200 * time.Millisecond),
				ReadTimeout: Duration(300 * time.Millisecond), WriteTimeout: Duration(300 * time.Millisecond),
				ReconcileInterval: Duration(time.Minute),
			},
		},
		Firewall: Firewall{Backend: "none", ReconcileInterval: Duration(time.Minute)},
		Admin:    Admin{Socket: socket},
		Metrics:  Metrics{Listen: "127.0.0.1:10030"},
		Recidive: Recidive{Window: Duration(7 * 24 * time.Hour), Factor: 2, MaxTime: Duration(7 * 24 * time.Hour)},
		Log:      Log{Level: "info", Format: "text"},
		Jails: map[string]Jail{
			"dovecot": {Enabled: true, Events: []string{"auth-failure"}, Key: "prefix", MaxRetry: 5,
				FindTime: Duration(10 * time.Minute), BanTime: Duration(time.Hour), Action: "firewall", Ports: mailPortsIMAP},
			"dovecot-user": {Enabled: true, Events: []string{"auth-failure"}, Key: "user", MaxRetry: 20,
				FindTime: Duration(time.Hour), BanTime: Duration(time.Hour), Action: "refuse", DistinctPasswords: true},
			"postfix-rate": {Enabled: true, Events: []string{"rcpt"}, Key: "user", MaxRetry: 500,
				FindTime: Duration(time.Hour), Action: "refuse"},
			"postfix": {Enabled: true, Events: []string{"smtp-abuse"}, Key: "prefix", MaxRetry: 5,
				FindTime: Duration(10 * time.Minute), BanTime: Duration(time.Hour), Action: "firewall",
				Ports: []string{"smtp", "submission", "smtps"}},
		},
	}
}

// UserDirs returns the state directory and admin socket of a non-root user:
// $XDG_STATE_HOME/mailguard and $XDG_RUNTIME_DIR/mailguard/admin.sock, with
// ~/.local/state and /tmp/mailguard-UID when those are not set.
func UserDirs() (stateDir, socket string) {
	state := os.Getenv("XDG_STATE_HOME")
	if state == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		state = filepath.Join(home, ".local", "state")
	}
	run := os.Getenv("XDG_RUNTIME_DIR")
	if run == "" {
		run = filepath.Join(os.TempDir(), fmt.Sprintf("mailguard-%d", os.Geteuid()))
	} else {
		run = filepath.Join(run, "mailguard")
	}
	return filepath.Join(state, "mailguard"), filepath.Join(run, "admin.sock")
}

// Load builds the effective config: defaults, then file (DefaultFile when
// file is "" and it exists), then MAILGUARD_* environment, then overrides
// ("key=value", the --set flag). Every problem found is returned together,
// each naming its key.
func Load(file string, overrides []string) (Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	def := Defaults()
	setDefaults(v, "", reflect.ValueOf(def))
	if file == "" {
		if _, err := os.Stat(DefaultFile); err == nil {
			file = DefaultFile
		}
	}
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return Config{}, fmt.Errorf("config: %w", err)
		}
		err = v.MergeConfig(f)
		f.Close()
		if err != nil {
			return Config{}, fmt.Errorf("config: %s: %w", file, err)
		}
	}
	// Environment: every key known so far (defaults, file) can be overridden.
	v.SetEnvPrefix("MAILGUARD")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	for _, o := range overrides {
		k, val, ok := strings.Cut(o, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return Config{}, fmt.Errorf("config: --set %q: want KEY=VALUE", o)
		}
		v.Set(strings.ToLower(strings.TrimSpace(k)), val)
	}

	var errs Errors
	known := knownKeys(reflect.TypeOf(Config{}), "")
	for _, k := range v.AllKeys() {
		if !isKnown(known, k) {
			errs = append(errs, fmt.Errorf("%s: unknown key", k))
		}
	}
	var c Config
	dec := &mapstructure.DecoderConfig{
		Result: &c, WeaklyTypedInput: true, TagName: "mapstructure",
		DecodeHook: mapstructure.ComposeDecodeHookFunc(durationHook, listHook),
	}
	d, err := mapstructure.NewDecoder(dec)
	if err != nil {
		return Config{}, err
	}
	if err := d.Decode(v.AllSettings()); err != nil {
		errs = append(errs, decodeErrors(err)...)
	} else {
		errs = append(errs, c.validate()...)
	}
	if len(errs) > 0 {
		return c, errs
	}
	return c, nil
}

// Errors lists every problem of a config, one per line.
type Errors []error

func (e Errors) Error() string {
	var b strings.Builder
	b.WriteString("invalid configuration:")
	for _, err := range e {
		b.WriteString("\n  ")
		b.WriteString(err.Error())
	}
	return b.String()
}

func decodeErrors(err error) Errors {
	var out Errors
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "*"))
		if line == "" || strings.HasPrefix(line, "decoding failed") {
			continue
		}
		// mapstructure names 'jails[dovecot].bantime'; users wrote jails.dovecot.bantime.
		if k, rest, ok := strings.Cut(strings.TrimPrefix(line, "'"), "' "); ok && strings.HasPrefix(line, "'") {
			k = strings.NewReplacer("[", ".", "]", "").Replace(k)
			line = k + ": " + rest
		}
		out = append(out, fmt.Errorf("%s", line))
	}
	return out
}

var durationType = reflect.TypeOf(Duration(0))

func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType {
		return data, nil
	}
	switch x := data.(type) {
	case string:
		return ParseDuration(x)
	case int:
		return ParseDuration(strconv.Itoa(x))
	case int64:
		return ParseDuration(strconv.FormatInt(x, 10))
	case float64:
		if x != float64(int64(x)) {
			return nil, fmt.Errorf("invalid duration %v: seconds must be whole", x)
		}
		return ParseDuration(strconv.FormatInt(int64(x), 10))
	case Duration:
		return x, nil
	case time.Duration:
		return Duration(x), nil
	}
	return nil, fmt.Errorf("invalid duration %v", data)
}

// listHook lets an environment variable or --set give a list as
// "a,b c": commas and spaces separate.
func listHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to.Kind() != reflect.Slice {
		return data, nil
	}
	return strings.FieldsFunc(data.(string), func(r rune) bool { return r == ',' || r == ' ' }), nil
}

func setDefaults(v *viper.Viper, prefix string, val reflect.Value) {
	t := val.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := prefix + f.Tag.Get("mapstructure")
		fv := val.Field(i)
		switch {
		case f.Type.Kind() == reflect.Struct:
			setDefaults(v, key+".", fv)
		case f.Type.Kind() == reflect.Map:
			iter := fv.MapRange()
			for iter.Next() {
				setDefaults(v, key+"."+iter.Key().String()+".", iter.Value())
			}
		case f.Type == durationType:
			v.SetDefault(key, fv.Interface().(Duration).String())
		default:
			v.SetDefault(key, fv.Interface())
		}
	}
}

// knownKeys lists the key patterns of t; "*" stands for a map key (a jail name).
func knownKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := prefix + f.Tag.Get("mapstructure")
		switch {
		case f.Type.Kind() == reflect.Struct:
			out = append(out, knownKeys(f.Type, key+".")...)
		case f.Type.Kind() == reflect.Map:
			out = append(out, knownKeys(f.Type.Elem(), key+".*.")...)
		default:
			out = append(out, key)
		}
	}
	return out
}

func isKnown(known []string, key string) bool {
	parts := strings.Split(key, ".")
	for _, k := range known {
		kp := strings.Split(k, ".")
		if len(kp) != len(parts) {
			continue
		}
		ok := true
		for i := range kp {
			if kp[i] != "*" && kp[i] != parts[i] {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

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

var (
	jailKeys    = []string{"ip", "prefix", "user", "user+prefix"}
	jailActions = []string{"refuse", "firewall"}
	jailEvents  = []string{"auth-failure", "rcpt", "smtp-abuse"}
)

func (c *Config) validate() Errors {
	var errs Errors
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
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
	if strings.TrimSpace(c.Postfix.RejectAction) == "" || strings.ContainsAny(c.Postfix.RejectAction, "\r\n") {
		bad("postfix.reject_action", "must be one line of text")
	}
	if strings.TrimSpace(c.Postfix.DeferAction) == "" || strings.ContainsAny(c.Postfix.DeferAction, "\r\n") {
		bad("postfix.defer_action", "must be one line of text")
	}
	if h := c.Dovecot.APIHeader; h != "" && strings.ContainsAny(h, "\r\n") {
		bad("dovecot.api_header", "must be one line")
	}
	if c.Dovecot.Tarpit.Max.D() > 8*time.Second {
		bad("dovecot.tarpit.max", "%s is too long: Postfix waits about 10s for Dovecot SASL; keep it at 8s or less", c.Dovecot.Tarpit.Max)
	}
	if c.Dovecot.Tarpit.Start < 1 {
		bad("dovecot.tarpit.start", "must be at least 1")
	}
	if !slices.Contains([]string{"memory", "redis"}, c.Store.Backend) {
		bad("store.backend", "must be memory or redis, not %q", c.Store.Backend)
	}
	if c.Store.Backend == "redis" && c.Store.Redis.URL == "" && len(c.Store.Redis.Addrs) == 0 {
		bad("store.redis.url", "store.backend is redis: set store.redis.url or store.redis.addrs")
	}
	if !slices.Contains([]string{"open", "closed"}, c.Store.FailMode) {
		bad("store.fail_mode", "must be open or closed, not %q", c.Store.FailMode)
	}
	if c.Store.Timeout.D() <= 0 || c.Store.Timeout.D() > 5*time.Second {
		bad("store.timeout", "must be between 1ms and 5s (Postfix and Dovecot must never wait on us)")
	}
	if !slices.Contains([]string{"none", "nftables", "iptables"}, c.Firewall.Backend) {
		bad("firewall.backend", "must be none, nftables or iptables, not %q", c.Firewall.Backend)
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
	names := make([]string, 0, len(c.Jails))
	for n := range c.Jails {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		j := c.Jails[n]
		k := "jails." + n
		if n == "manual" {
			bad(k, "the name manual is reserved for bans made with mailguard ban")
		}
		if !j.Enabled {
			continue
		}
		if len(j.Events) == 0 {
			bad(k+".events", "must name at least one of %s", strings.Join(jailEvents, ", "))
		}
		for _, e := range j.Events {
			if !slices.Contains(jailEvents, e) {
				bad(k+".events", "unknown event %q (one of %s)", e, strings.Join(jailEvents, ", "))
			}
		}
		if !slices.Contains(jailKeys, j.Key) {
			bad(k+".key", "must be one of %s, not %q", strings.Join(jailKeys, ", "), j.Key)
		}
		if j.MaxRetry < 1 {
			bad(k+".maxretry", "must be at least 1, not %d", j.MaxRetry)
		}
		if j.FindTime.D() <= 0 {
			bad(k+".findtime", "must be positive")
		}
		rateOnly := len(j.Events) > 0 && !slices.ContainsFunc(j.Events, func(e string) bool { return e != "rcpt" })
		if j.BanTime.D() <= 0 && !rateOnly {
			bad(k+".bantime", "must be positive (only a jail counting rcpt alone may have no bantime: it defers while over)")
		}
		if !slices.Contains(jailActions, j.Action) {
			bad(k+".action", "must be refuse or firewall, not %q", j.Action)
		}
		if j.Action == "firewall" && len(j.Ports) == 0 {
			bad(k+".ports", "a firewall jail needs ports")
		}
		if j.Action == "firewall" && (j.Key == "user" || j.Key == "user+prefix") {
			bad(k+".action", "a jail keyed by %s cannot ban in the firewall; use refuse", j.Key)
		}
		for _, p := range j.Ports {
			if _, err := ParsePort(p); err != nil {
				bad(k+".ports", "%v", err)
			}
		}
	}
	return errs
}

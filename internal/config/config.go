// Package config is mailguard's typed configuration: built-in defaults, a YAML
// file, MAILGUARD_* environment variables and --set flags, decoded strictly
// (an unknown key is an error naming it) and validated as a whole.
//
// Defaults and enumerations are not spelled here: each comes from the package
// that uses it (policyd, authhook, guard, redisstore). Secret keys are
// declared by a `secret` tag on their field and masked in everything this
// package prints: check-config's output (Masked) and error messages (Redact).
package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

// DefaultFile is read when present and no --config is given.
const DefaultFile = "/etc/mailguard/mailguard.yaml"

// Config is the effective configuration. Field tags are the config keys; a
// `secret` tag (value, header or url, see Masked) marks a secret.
type Config struct {
	StateDir       string          `mapstructure:"state_dir" yaml:"state_dir"`
	IgnoreIP       []string        `mapstructure:"ignoreip" yaml:"ignoreip"`
	Prefix         Prefixes        `mapstructure:"prefix" yaml:"prefix"`
	KnownDeviceTTL Duration        `mapstructure:"known_device_ttl" yaml:"known_device_ttl"`
	Postfix        Postfix         `mapstructure:"postfix" yaml:"postfix"`
	Dovecot        Dovecot         `mapstructure:"dovecot" yaml:"dovecot"`
	Store          Store           `mapstructure:"store" yaml:"store"`
	Firewall       Firewall        `mapstructure:"firewall" yaml:"firewall"`
	Admin          Admin           `mapstructure:"admin" yaml:"admin"`
	Metrics        Metrics         `mapstructure:"metrics" yaml:"metrics"`
	Recidive       Recidive        `mapstructure:"recidive" yaml:"recidive"`
	Log            Log             `mapstructure:"log" yaml:"log"`
	Logwatch       Logwatch        `mapstructure:"logwatch" yaml:"logwatch"`
	Jails          map[string]Jail `mapstructure:"jails" yaml:"jails"`
	API            API             `mapstructure:"api" yaml:"api"`
	Safety         Safety          `mapstructure:"safety" yaml:"safety"`
	TOTP           TOTP            `mapstructure:"totp" yaml:"totp"`
	Audit          Audit           `mapstructure:"audit" yaml:"audit"`
}

// Audit is the audit trail (package audit) and `mailguard explain`.
type Audit struct {
	Enabled     bool   `mapstructure:"enabled" yaml:"enabled"`
	User        string `mapstructure:"user" yaml:"user"`           // audit.UserModes
	Reference   bool   `mapstructure:"reference" yaml:"reference"` // "(ref ID)" in replies
	Node        string `mapstructure:"node" yaml:"node"`           // "": the host name
	File        string `mapstructure:"file" yaml:"file"`           // "": no file
	FileMaxSize string `mapstructure:"file_max_size" yaml:"file_max_size"`
	FileKeep    int    `mapstructure:"file_keep" yaml:"file_keep"`
}

// API is the HTTP API for web apps and nginx auth_request (package api).
// It is served only when TokensFile is set.
type API struct {
	Listen     string `mapstructure:"listen" yaml:"listen"`
	TokensFile string `mapstructure:"tokens_file" yaml:"tokens_file"`
	TLSCert    string `mapstructure:"tls_cert" yaml:"tls_cert"`
	TLSKey     string `mapstructure:"tls_key" yaml:"tls_key"`
	MaxConns   int    `mapstructure:"max_conns" yaml:"max_conns"`
}

// Safety holds the rules that keep mailguard from locking out many users.
type Safety struct {
	SharedAddress SharedAddress `mapstructure:"shared_address" yaml:"shared_address"`
	// MaxBansPerMinute is guard's blast-radius guard (Config.MaxBansPerMinute);
	// 0 turns it off.
	MaxBansPerMinute int `mapstructure:"max_bans_per_minute" yaml:"max_bans_per_minute"`
}

// SharedAddress is guard.SharedRule: MinUsers 0 turns it off.
type SharedAddress struct {
	MinUsers int      `mapstructure:"min_users" yaml:"min_users"`
	Window   Duration `mapstructure:"window" yaml:"window"`
}

// TOTP is the second factor for mail logins (package totp).
type TOTP struct {
	Enabled bool   `mapstructure:"enabled" yaml:"enabled"`
	Listen  string `mapstructure:"listen" yaml:"listen"`
	// KeyFile holds the key that seals the secrets; empty: state_dir/totp.key.
	KeyFile        string   `mapstructure:"key_file" yaml:"key_file"`
	Issuer         string   `mapstructure:"issuer" yaml:"issuer"`
	TrustTTL       Duration `mapstructure:"trust_ttl" yaml:"trust_ttl"`
	TrustPrefix    Prefix   `mapstructure:"trust_prefix" yaml:"trust_prefix"`
	PendingTTL     Duration `mapstructure:"pending_ttl" yaml:"pending_ttl"`
	RejectMsg      string   `mapstructure:"reject_msg" yaml:"reject_msg"`
	TrustedProxies []string `mapstructure:"trusted_proxies" yaml:"trusted_proxies"`
	URL            string   `mapstructure:"url" yaml:"url"`
}

// TOTPKeyFile returns totp.key_file, or its default under state_dir.
func (c Config) TOTPKeyFile() string {
	if c.TOTP.KeyFile != "" {
		return c.TOTP.KeyFile
	}
	return filepath.Join(c.StateDir, "totp.key")
}

// TOTPRejectMsg is totp.reject_msg with {url} replaced by totp.url.
func (c Config) TOTPRejectMsg() string {
	return strings.ReplaceAll(c.TOTP.RejectMsg, "{url}", c.TOTP.URL)
}

type Prefix struct {
	IPv4 int `mapstructure:"ipv4" yaml:"ipv4"`
	IPv6 int `mapstructure:"ipv6" yaml:"ipv6"`
}

// Prefixes is the prefix section: the aggregation lengths and the adaptive
// IPv6 steps.
type Prefixes struct {
	IPv4 int `mapstructure:"ipv4" yaml:"ipv4"`
	IPv6 int `mapstructure:"ipv6" yaml:"ipv6"`
	// IPv6Widen is guard.Config.Widen: empty turns adaptive IPv6 prefixes off.
	IPv6Widen []WidenStep `mapstructure:"ipv6_widen" yaml:"ipv6_widen"`
}

// WidenStep is one guard.WidenStep.
type WidenStep struct {
	Bits   int      `mapstructure:"bits" yaml:"bits"`
	Bans   int      `mapstructure:"bans" yaml:"bans"`
	Window Duration `mapstructure:"window" yaml:"window"`
}

type Postfix struct {
	Listen       string   `mapstructure:"listen" yaml:"listen"`
	RejectAction string   `mapstructure:"reject_action" yaml:"reject_action"`
	DeferAction  string   `mapstructure:"defer_action" yaml:"defer_action"`
	IdleTimeout  Duration `mapstructure:"idle_timeout" yaml:"idle_timeout"`
	MaxConns     int      `mapstructure:"max_conns" yaml:"max_conns"`
}

type Dovecot struct {
	Listen    string `mapstructure:"listen" yaml:"listen"`
	APIHeader string `mapstructure:"api_header" yaml:"api_header" secret:"header"`
	RejectMsg string `mapstructure:"reject_msg" yaml:"reject_msg"`
	// RejectMsgUser answers a refusal keyed by the user (jail key user).
	RejectMsgUser string   `mapstructure:"reject_msg_user" yaml:"reject_msg_user"`
	Tarpit        Tarpit   `mapstructure:"tarpit" yaml:"tarpit"`
	MaxConns      int      `mapstructure:"max_conns" yaml:"max_conns"`
	Timeout       Duration `mapstructure:"timeout" yaml:"timeout"`

	// InsecureNoAuth: with APIHeader empty, require no API header at all
	// (otherwise a key in state_dir is generated and required).
	InsecureNoAuth bool `mapstructure:"insecure_no_auth" yaml:"insecure_no_auth"`
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
	URL               string   `mapstructure:"url" yaml:"url" secret:"url"`
	Addrs             []string `mapstructure:"addrs" yaml:"addrs"`
	MasterName        string   `mapstructure:"master_name" yaml:"master_name"`
	Username          string   `mapstructure:"username" yaml:"username"`
	Password          string   `mapstructure:"password" yaml:"password" secret:"value"`
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
	// Pprof serves Go's profiler under /debug/pprof/ on the metrics
	// listener (off by default: it shows the daemon's internals).
	Pprof bool `mapstructure:"pprof" yaml:"pprof"`
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

// Logwatch holds what every log source shares.
type Logwatch struct {
	// Backlog bounds what a restart reads of the lines written while
	// mailguard was down (a position or journal cursor older than this is
	// not resumed from).
	Backlog Duration `mapstructure:"backlog" yaml:"backlog"`
}

// LogSource is one entry of jails.NAME.logs: a file (Path) or the journal
// (Journal, journalctl matches separated by spaces), read through Filter
// (a shipped filter's name or a filter file's path) in Mode. With both Path
// and Journal, the file is read when it exists at start, else the journal.
type LogSource struct {
	Path    string `mapstructure:"path" yaml:"path,omitempty"`
	Journal string `mapstructure:"journal" yaml:"journal,omitempty"`
	Filter  string `mapstructure:"filter" yaml:"filter"`
	Mode    string `mapstructure:"mode" yaml:"mode,omitempty"`
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
	Apps              []string `mapstructure:"apps" yaml:"apps"`
	// Logs are the log sources whose filter matches count in this jail.
	Logs []LogSource `mapstructure:"logs" yaml:"logs"`
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

// Load builds the effective config: defaults, then file (DefaultFile when
// file is "" and it exists), then MAILGUARD_* environment, then overrides
// ("key=value", the --set flag). Every problem found is returned together
// as Errors, each naming its key; no error shows a secret's value.
func Load(file string, overrides []string) (Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	setDefaults(v, "", reflect.ValueOf(Defaults()))
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
			return Config{}, fmt.Errorf("config: --set %q: want KEY=VALUE", maskSetArg(o))
		}
		v.Set(strings.ToLower(strings.TrimSpace(k)), val)
	}

	var errs Errors
	var unknown []string
	for _, k := range v.AllKeys() {
		if _, ok := lookup(k); !ok {
			unknown = append(unknown, k)
		}
	}
	unknown = append(unknown, unknownWiden(v.Get("prefix.ipv6_widen"))...)
	slices.Sort(unknown)
	for _, k := range unknown {
		errs = append(errs, &KeyError{Key: k, Msg: "unknown key"})
	}
	var c Config
	d, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result: &c, WeaklyTypedInput: true, TagName: "mapstructure",
		DecodeHook: mapstructure.ComposeDecodeHookFunc(durationHook, intHook, logsHook, listHook),
	})
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
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

// unknownWiden names the unknown keys inside prefix.ipv6_widen's steps,
// which the key list (a list is one key) does not reach.
func unknownWiden(raw any) []string {
	list, _ := raw.([]any)
	var out []string
	for i, x := range list {
		m, _ := x.(map[string]any)
		for k := range m {
			if k != "bits" && k != "bans" && k != "window" {
				out = append(out, fmt.Sprintf("prefix.ipv6_widen.%d.%s", i, k))
			}
		}
	}
	return out
}

// KeyError is one problem of a config: the key and what is wrong with it.
// Msg never holds a secret's value.
type KeyError struct {
	Key string // as the user writes it: jails.dovecot.bantime
	Msg string
}

func (e *KeyError) Error() string { return e.Key + ": " + e.Msg }

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

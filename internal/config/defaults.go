package config

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mailguard/mailguard/api"
	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/authhook"
	"github.com/mailguard/mailguard/enforce"
	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/logwatch"
	"github.com/mailguard/mailguard/policyd"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/totp"
)

// DefaultTOTPRejectMsg is totp.reject_msg's default; {url} is totp.url.
const DefaultTOTPRejectMsg = "New device: approve it with your authenticator code at {url} then log in again."

// Defaults returns the built-in configuration: what `mailguard serve` runs
// with no file. Paths depend on whether we run as root. A value that a
// package has a default for is taken from that package, so that a library
// used with zero fields and the daemon behave alike.
func Defaults() Config {
	stateDir, socket := "/var/lib/mailguard", "/run/mailguard/admin.sock"
	if os.Geteuid() != 0 {
		stateDir, socket = UserDirs()
	}
	return Config{
		StateDir:       stateDir,
		IgnoreIP:       []string{"127.0.0.0/8", "::1"},
		Prefix:         Prefixes{IPv4: guard.DefaultPrefixes.IPv4, IPv6: guard.DefaultPrefixes.IPv6},
		KnownDeviceTTL: Duration(guard.DefaultKnownDeviceTTL),
		Postfix: Postfix{
			Listen:       "127.0.0.1:10028",
			RejectAction: policyd.DefaultRejectAction,
			DeferAction:  policyd.DefaultDeferAction,
			IdleTimeout:  Duration(policyd.DefaultIdleTimeout),
			MaxConns:     policyd.DefaultMaxConns,
		},
		Dovecot: Dovecot{
			Listen:        "127.0.0.1:10029",
			RejectMsg:     authhook.DefaultRejectMsg,
			RejectMsgUser: authhook.DefaultRejectUserMsg,
			Tarpit: Tarpit{Start: authhook.DefaultTarpit.Start, Base: Duration(authhook.DefaultTarpit.Base),
				Max: Duration(authhook.DefaultTarpit.Max)},
			MaxConns: authhook.DefaultMaxConns,
			Timeout:  Duration(authhook.DefaultReadTimeout),
		},
		Store: Store{
			// store.timeout bounds both front ends' guard calls; their
			// defaults agree (a test holds them equal).
			Backend: "memory", FailMode: "open", Timeout: Duration(policyd.DefaultTimeout),
			Redis: Redis{
				Prefix: redisstore.DefaultPrefix, DialTimeout: Duration(redisstore.DefaultDialTimeout),
				ReadTimeout: Duration(redisstore.DefaultReadTimeout), WriteTimeout: Duration(redisstore.DefaultWriteTimeout),
				ReconcileInterval: Duration(time.Minute),
			},
		},
		Firewall: Firewall{Backend: firewall.NameNone, ReconcileInterval: Duration(enforce.DefaultReconcileInterval)},
		Admin:    Admin{Socket: socket},
		Metrics:  Metrics{Listen: "127.0.0.1:10030"},
		Recidive: Recidive{Window: Duration(7 * 24 * time.Hour), Factor: 2, MaxTime: Duration(7 * 24 * time.Hour)},
		Log:      Log{Level: "info", Format: "text"},
		API:      API{Listen: "127.0.0.1:10031", MaxConns: api.DefaultMaxConns},
		Safety: Safety{SharedAddress: SharedAddress{MinUsers: guard.DefaultSharedMinUsers, Window: Duration(guard.DefaultSharedWindow)},
			MaxBansPerMinute: guard.DefaultMaxBansPerMinute},
		Logwatch: Logwatch{Backlog: Duration(logwatch.DefaultBacklog)},
		TOTP: TOTP{
			Listen: "127.0.0.1:10032", Issuer: totp.DefaultIssuer, TrustTTL: Duration(totp.DefaultTrustTTL),
			TrustPrefix: Prefix{IPv4: totp.DefaultTrustPrefix.IPv4, IPv6: totp.DefaultTrustPrefix.IPv6},
			PendingTTL:  Duration(guard.DefaultPendingTTL), RejectMsg: DefaultTOTPRejectMsg,
			TrustedProxies: []string{"127.0.0.1", "::1"},
		},
		Audit: Audit{Enabled: true, User: string(audit.DefaultUserMode), Reference: false,
			FileMaxSize: "100MB", FileKeep: audit.DefaultFileKeep},
		Jails: map[string]Jail{
			"dovecot": {Enabled: true, Events: []string{guard.EventAuthFailure}, Key: string(guard.KeyPrefix), MaxRetry: 5,
				FindTime: Duration(10 * time.Minute), BanTime: Duration(time.Hour), Action: string(guard.ActionFirewall),
				Ports: []string{"imap", "imaps", "pop3", "pop3s", "submission", "smtps"}},
			"dovecot-user": {Enabled: true, Events: []string{guard.EventAuthFailure}, Key: string(guard.KeyUser), MaxRetry: 20,
				FindTime: Duration(time.Hour), BanTime: Duration(time.Hour), Action: string(guard.ActionRefuse), DistinctPasswords: true},
			"postfix-rate": {Enabled: true, Events: []string{guard.EventRecipient}, Key: string(guard.KeyUser), MaxRetry: 500,
				FindTime: Duration(time.Hour), Action: string(guard.ActionRefuse)},
			"postfix": {Enabled: true, Events: []string{guard.EventAbuse}, Key: string(guard.KeyPrefix), MaxRetry: 5,
				FindTime: Duration(10 * time.Minute), BanTime: Duration(time.Hour), Action: string(guard.ActionFirewall),
				Ports: []string{"smtp", "submission", "smtps"},
				// Postfix's log: the file rsyslog writes, else the journal.
				Logs: []LogSource{{Path: logwatch.PostfixLog, Journal: logwatch.PostfixJournal, Filter: "postfix"}}},
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

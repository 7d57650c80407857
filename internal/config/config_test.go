package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/authhook"
	"github.com/mailguard/mailguard/policyd"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.err with the errors Load returns now")

func TestDefaultsValid(t *testing.T) {
	if _, err := Load("testdata/none-such.yaml", nil); err == nil {
		t.Fatalf("Load(missing file) = nil error")
	}
	c, err := Load("", nil)
	if err != nil {
		t.Fatalf("Load(defaults) = %v", err)
	}
	if got, want := c.Jails["dovecot"].MaxRetry, 5; got != want {
		t.Errorf("dovecot maxretry = %d, want %d", got, want)
	}
	if got, want := c.Postfix.Listen, "127.0.0.1:10028"; got != want {
		t.Errorf("postfix.listen = %q, want %q", got, want)
	}
}

// store.timeout is the Timeout of both front ends: their own defaults must
// agree, or a library used with zero fields and the daemon would differ.
func TestStoreTimeoutOneValue(t *testing.T) {
	if policyd.DefaultTimeout != authhook.DefaultTimeout {
		t.Errorf("policyd.DefaultTimeout = %v, authhook.DefaultTimeout = %v: store.timeout feeds both, make them equal",
			policyd.DefaultTimeout, authhook.DefaultTimeout)
	}
}

func TestGoodFile(t *testing.T) {
	c, err := Load("testdata/good.yaml", nil)
	if err != nil {
		t.Fatalf("Load(good.yaml) = %v", err)
	}
	if got, want := c.Jails["dovecot"].FindTime.D(), 10*time.Minute; got != want {
		t.Errorf("findtime 600 = %v, want %v", got, want)
	}
	if got, want := c.Jails["dovecot"].BanTime.D(), 168*time.Hour; got != want {
		t.Errorf("bantime 168h = %v, want %v", got, want)
	}
	// A file that sets one field of a default jail keeps the others.
	if got, want := c.Jails["dovecot"].MaxRetry, 5; got != want {
		t.Errorf("dovecot maxretry = %d, want %d (default kept)", got, want)
	}
	if got := c.Jails["imap-only"].Protocols; len(got) != 1 || got[0] != "imap" {
		t.Errorf("imap-only protocols = %v", got)
	}
	want := []LogSource{{Path: "/var/log/mail.log", Filter: "postfix", Mode: "aggressive"},
		{Journal: "_SYSTEMD_UNIT=postfix@-.service + SYSLOG_IDENTIFIER=postfix/smtpd", Filter: "../../logwatch/filter/filters/postfix-sasl.conf"}}
	if got := c.Jails["postfix"].Logs; !slices.Equal(got, want) {
		t.Errorf("postfix logs = %+v, want %+v (the file's list replaces the default)", got, want)
	}
}

// The default postfix jail reads Postfix's log; an empty --set turns it off.
func TestDefaultPostfixLogs(t *testing.T) {
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Jails["postfix"].Logs; len(got) != 1 || got[0].Path == "" || got[0].Journal == "" || got[0].Filter != "postfix" {
		t.Errorf("default postfix logs = %+v, want the mail log, else the journal, through the postfix filter", got)
	}
	c, err = Load("", []string{"jails.postfix.logs="})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Jails["postfix"].Logs; len(got) != 0 {
		t.Errorf("--set jails.postfix.logs= left %+v", got)
	}
}

// TestBadFiles loads every testdata/bad/NAME.yaml, one per rule, and wants
// exactly the error in NAME.err (go test -update rewrites them; review the
// diff). No error may show a secret: the files use "hunter2" for them.
func TestBadFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/bad/*.yaml: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			_, err := Load(f, nil)
			if err == nil {
				t.Fatalf("Load(%s) = nil error", f)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, rerr := os.ReadFile(golden)
			if rerr != nil {
				t.Fatalf("%v (go test -update writes it)", rerr)
			}
			if got != string(want) {
				t.Errorf("Load(%s) =\n%s\nwant\n%s", f, got, want)
			}
			if strings.Contains(got, "hunter2") {
				t.Errorf("Load(%s) shows a secret: %s", f, got)
			}
		})
	}
}

// Every validation rule has its bad file: each key validate can complain
// about appears in some golden.
func TestEveryRuleHasABadFile(t *testing.T) {
	src, err := os.ReadFile("validate.go")
	if err != nil {
		t.Fatal(err)
	}
	var goldens strings.Builder
	errFiles, _ := filepath.Glob("testdata/bad/*.err")
	for _, f := range errFiles {
		b, _ := os.ReadFile(f)
		goldens.Write(b)
	}
	// bad("key", ...), positive("key", ...), atLeast1("key", ...), oneLine("key", ...)
	// and the jail rules, written k+".field".
	re := regexp.MustCompile(`(?:bad|positive|atLeast1|oneLine)\((?:"([a-z0-9_.]+)"|k\+"(\.[a-z_]+)"|(k),)`)
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		key := m[1]
		switch {
		case m[2] != "":
			key = "jails.dovecot" + m[2]
		case m[3] != "":
			key = "jails.manual"
		}
		if !strings.Contains(goldens.String(), key+":") && !strings.Contains(goldens.String(), strings.Replace(key, "jails.dovecot.", "jails.dovecot-user.", 1)+":") {
			t.Errorf("no testdata/bad file produces an error for %s", key)
		}
	}
}

func TestSetErrors(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"novalue", `config: --set "novalue": want KEY=VALUE`},
		{"store.redis.password:hunter2", `config: --set "store.redis.password…": want KEY=VALUE`},
		{"=hunter2", `config: --set "…": want KEY=VALUE`},
		{"postfix.max_conns=0", "invalid configuration:\n  postfix.max_conns: must be at least 1, not 0 (0 or less would close every Postfix connection)"},
		{"store.redis.url=redis://u:hunter2%zz@h/0", "invalid configuration:\n  store.redis.url: redis://*****@h/0 is not a URL: redis://[user:password@]host:port/db; percent-encode any of @ : / ? # % in the password"},
	} {
		_, err := Load("", []string{tc.set})
		if err == nil || err.Error() != tc.want {
			t.Errorf("Load(--set %s) = %v, want %q", tc.set, err, tc.want)
		}
	}
}

func TestEnvAndSet(t *testing.T) {
	t.Setenv("MAILGUARD_STORE_FAIL_MODE", "closed")
	t.Setenv("MAILGUARD_JAILS_DOVECOT_USER_MAXRETRY", "7")
	t.Setenv("MAILGUARD_IGNOREIP", "10.0.0.0/8, 192.0.2.1")
	c, err := Load("", []string{"jails.dovecot.bantime=7200", "postfix.listen=unix:/tmp/p.sock"})
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	if c.Store.FailMode != "closed" {
		t.Errorf("store.fail_mode = %q, want closed (from env)", c.Store.FailMode)
	}
	if got := c.Jails["dovecot-user"].MaxRetry; got != 7 {
		t.Errorf("dovecot-user maxretry = %d, want 7 (from env)", got)
	}
	if got := c.IgnoreIP; len(got) != 2 || got[1] != "192.0.2.1" {
		t.Errorf("ignoreip = %q, want 2 entries from env", got)
	}
	if got := c.Jails["dovecot"].BanTime.D(); got != 2*time.Hour {
		t.Errorf("bantime = %v, want 2h (from --set)", got)
	}
	t.Setenv("MAILGUARD_DOVECOT_MAX_CONNS", "-3")
	want := "invalid configuration:\n  dovecot.max_conns: must be at least 1, not -3 (0 or less would refuse every Dovecot connection)"
	if _, err := Load("", nil); err == nil || err.Error() != want {
		t.Errorf("MAILGUARD_DOVECOT_MAX_CONNS=-3: err = %v, want %q", err, want)
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"10m", 10 * time.Minute, true}, {"600", 10 * time.Minute, true}, {"168h", 168 * time.Hour, true},
		{"0", 0, true}, {"-5", 0, false}, {"ten", 0, false}, {"1.5", 0, false},
	} {
		got, err := ParseDuration(tc.in)
		if (err == nil) != tc.ok || got.D() != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// The example in contrib documents every key with its default: loading it
// must give exactly the built-in defaults (paths aside).
func TestExampleIsDefaults(t *testing.T) {
	ex, err := Load("../../contrib/mailguard.example.yaml", nil)
	if err != nil {
		t.Fatalf("contrib/mailguard.example.yaml: %v", err)
	}
	def, _ := Load("", nil)
	ex.StateDir, ex.Admin.Socket = def.StateDir, def.Admin.Socket
	if got, want := fmt.Sprintf("%+v", ex), fmt.Sprintf("%+v", def); got != want {
		t.Errorf("example differs from defaults:\nexample  %s\ndefaults %s", got, want)
	}
	b, err := os.ReadFile("../../contrib/mailguard.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		leaf := k.pattern[strings.LastIndex(k.pattern, ".")+1:]
		if !strings.Contains(string(b), leaf+":") {
			t.Errorf("example does not document %s", k.pattern)
		}
	}
}

// README's defaults table must say what the code does: each row's key and
// its first default value.
func TestReadmeDefaults(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	def := Defaults()
	short := func(d Duration) string { // 6m, 720h: as README writes them
		s := d.String()
		if strings.HasSuffix(s, "m0s") {
			s = strings.TrimSuffix(s, "0s")
		}
		return strings.TrimSuffix(s, "0m")
	}
	for _, tc := range []struct{ row, want string }{
		{"`postfix.idle_timeout`, `postfix.max_conns`", fmt.Sprintf("`%s`, `%d`", short(def.Postfix.IdleTimeout), def.Postfix.MaxConns)},
		{"`dovecot.max_conns`, `dovecot.timeout`", fmt.Sprintf("`%d`, `%s`", def.Dovecot.MaxConns, short(def.Dovecot.Timeout))},
		{"`store.timeout`", fmt.Sprintf("`%s`", short(def.Store.Timeout))},
		{"`dovecot.tarpit.start`, `.base`, `.max`", fmt.Sprintf("`%d`, `%s`, `%s`", def.Dovecot.Tarpit.Start, short(def.Dovecot.Tarpit.Base), short(def.Dovecot.Tarpit.Max))},
		{"`prefix.ipv4` / `prefix.ipv6`", fmt.Sprintf("`%d` / `%d`", def.Prefix.IPv4, def.Prefix.IPv6)},
		{"`known_device_ttl`", fmt.Sprintf("`%s`", short(def.KnownDeviceTTL))},
		{"`logwatch.backlog`", fmt.Sprintf("`%s`", strings.TrimSuffix(def.Logwatch.Backlog.String(), "0s"))}, // 10m0s: short would make it 1
		{"`dovecot.reject_msg`", "`" + def.Dovecot.RejectMsg[:40]},
		{"`postfix.reject_action`", "`" + def.Postfix.RejectAction[:30]},
		{"`postfix.defer_action`", "`" + def.Postfix.DeferAction[:30]},
		{"`api.listen`", "`" + def.API.Listen + "`"},
		{"`api.max_conns`", fmt.Sprintf("`%d`", def.API.MaxConns)},
		{"`safety.shared_address.min_users`, `.window`", fmt.Sprintf("`%d`, `%s`", def.Safety.SharedAddress.MinUsers, short(def.Safety.SharedAddress.Window))},
		{"`totp.listen`", "`" + def.TOTP.Listen + "`"},
		{"`totp.issuer`", "`" + def.TOTP.Issuer + "`"},
		{"`totp.trust_ttl`", fmt.Sprintf("`%s`", short(def.TOTP.TrustTTL))},
		{"`totp.trust_prefix.ipv4` / `.ipv6`", fmt.Sprintf("`%d` / `%d`", def.TOTP.TrustPrefix.IPv4, def.TOTP.TrustPrefix.IPv6)},
		{"`totp.pending_ttl`", fmt.Sprintf("`%s`", short(def.TOTP.PendingTTL))},
		{"`totp.reject_msg`", "`" + def.TOTP.RejectMsg[:40]},
		{"`audit.enabled`, `audit.user`, `audit.reference`", fmt.Sprintf("`%v`, `%s`, `%v`", def.Audit.Enabled, def.Audit.User, def.Audit.Reference)},
		{"`audit.file`, `audit.file_max_size`, `audit.file_keep`", fmt.Sprintf("empty: none, `%s`, `%d`", def.Audit.FileMaxSize, def.Audit.FileKeep)},
		{"`safety.max_bans_per_minute`", fmt.Sprintf("`%d`", def.Safety.MaxBansPerMinute)},
		{"`prefix.ipv6_widen`", fmt.Sprintf("`%v`", def.Prefix.IPv6Widen)},
	} {
		i := strings.Index(string(b), "| "+tc.row+" | ")
		if i < 0 {
			t.Errorf("README has no defaults row %s", tc.row)
			continue
		}
		line := string(b[i:])
		line = line[:strings.IndexByte(line, '\n')]
		if !strings.HasPrefix(line[len("| "+tc.row+" | "):], tc.want) {
			t.Errorf("README row %q, want default %s", line, tc.want)
		}
	}
}

func TestSecretKeys(t *testing.T) {
	got := SecretKeys()
	want := []string{"dovecot.api_header", "store.redis.url", "store.redis.password"}
	if !slices.Equal(got, want) {
		t.Errorf("SecretKeys() = %q, want %q", got, want)
	}
	// A tripwire for new keys: a name that sounds secret must be declared.
	sounds := regexp.MustCompile(`^(.*_)?(password|url)$|secret|token|header|credential|api_?key`)
	for _, k := range keys {
		leaf := k.pattern[strings.LastIndex(k.pattern, ".")+1:]
		// A path to a file of secrets (api.tokens_file) is not itself one;
		// totp.url is the public address of the approval page, shown to users.
		if sounds.MatchString(leaf) && k.secret == "" && !strings.HasSuffix(leaf, "_file") && k.pattern != "totp.url" {
			t.Errorf("%s sounds secret but has no secret tag", k.pattern)
		}
	}
}

func TestMask(t *testing.T) {
	for _, tc := range []struct{ kind, in, want string }{
		{secretHeader, "Authorization: Bearer hunter2", "Authorization: *****"},
		{secretHeader, "X-API-Key:hunter2", "X-API-Key: *****"},
		{secretHeader, "hunter2", "*****"},
		{secretHeader, "Bearer hunter2 : x", "*****"}, // not a header name: mask it all
		{secretHeader, "", ""},
		{secretValue, "hunter2", "*****"},
		{secretURL, "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{secretURL, "redis://mailguard@127.0.0.1:6379/0", "redis://mailguard@127.0.0.1:6379/0"},
		{secretURL, "redis://mailguard:hunter2@127.0.0.1:6379/0", "redis://mailguard:*****@127.0.0.1:6379/0"},
		{secretURL, "rediss://:hunter2@redis.example.org:6380", "rediss://:*****@redis.example.org:6380"},
		{secretURL, "redis://u:hun@ter2@h:1/0", "redis://u:*****@h:1/0"},
		{secretURL, "redis://u:hunter2%zz@h:1/0", "redis://*****@h:1/0"},
		{secretURL, "redis://u:hun/ter2@h:1/0", "redis://*****@h:1/0"},
		{secretURL, "redis://u:hun#ter2@h:1/0", "redis://*****@h:1/0"},
		{secretURL, "u:hunter2@h:1", "*****@h:1"},
	} {
		if got := mask(tc.kind, tc.in); got != tc.want {
			t.Errorf("mask(%s, %q) = %q, want %q", tc.kind, tc.in, got, tc.want)
		}
	}
}

// Secrets from the file, --set and the environment are all masked by
// Masked, and Redact hides them in any text.
func TestMaskedFromEverySource(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("dovecot:\n  api_header: \"Authorization: Bearer hunter2-file\"\n"), 0o600)
	for _, tc := range []struct {
		name string
		file string
		sets []string
		env  map[string]string
	}{
		{"file", file, nil, nil},
		{"set", "", []string{"dovecot.api_header=Authorization: Bearer hunter2-set", "store.redis.password=hunter2-set",
			"store.redis.url=redis://u:hunter2-set@127.0.0.1:6379/0"}, nil},
		{"env", "", nil, map[string]string{"MAILGUARD_DOVECOT_API_HEADER": "Authorization: Bearer hunter2-env",
			"MAILGUARD_STORE_REDIS_PASSWORD": "hunter2-env", "MAILGUARD_STORE_REDIS_URL": "redis://u:hunter2-env@127.0.0.1:6379/0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := Load(tc.file, tc.sets)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(c.Dovecot.APIHeader, "hunter2") {
				t.Fatalf("api_header = %q: the secret did not load", c.Dovecot.APIHeader)
			}
			m := c.Masked()
			if got := fmt.Sprintf("%+v", m); strings.Contains(got, "hunter2") {
				t.Errorf("Masked() shows a secret: %s", got)
			}
			if m.Dovecot.APIHeader != "Authorization: *****" {
				t.Errorf("masked api_header = %q", m.Dovecot.APIHeader)
			}
			if !strings.Contains(c.Dovecot.APIHeader, "hunter2") {
				t.Errorf("Masked changed its receiver")
			}
			text := fmt.Sprintf("dial %s as %s with %s failed", c.Store.Redis.URL, c.Store.Redis.Password, c.Dovecot.APIHeader)
			if got := c.Redact(text); strings.Contains(got, "hunter2") {
				t.Errorf("Redact(%q) = %q", text, got)
			}
		})
	}
}

func TestRedactUnparseableURL(t *testing.T) {
	c := Defaults()
	c.Store.Redis.URL = `redis://u:hun"ter2%zz@127.0.0.1:6379/0`
	// What redisstore.Open returned through serve before config caught it.
	msg := fmt.Sprintf("redisstore: url: parse %q: invalid URL escape %q", c.Store.Redis.URL, "%zz")
	got := c.Redact(msg)
	if strings.Contains(got, "hun") || strings.Contains(got, "ter2") {
		t.Errorf("Redact(%q) = %q", msg, got)
	}
	if !strings.Contains(got, "127.0.0.1:6379") {
		t.Errorf("Redact(%q) = %q: more than the secret went", msg, got)
	}
}

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// secretSource runs the binary with secrets given one way: in the config
// file, with --set, or in MAILGUARD_* variables. Each secret contains
// "hunter2", which must never be printed.
type secretSource struct {
	name string
	file string   // YAML for the config file
	sets []string // --set KEY=VALUE
	env  []string // KEY=VALUE
}

func runWith(t *testing.T, src secretSource, args ...string) (string, int) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "mailguard.yaml")
	if err := os.WriteFile(cfg, []byte("# secrets test\n"+src.file), 0o600); err != nil {
		t.Fatal(err)
	}
	args = append(args, "--config", cfg)
	for _, s := range src.sets {
		args = append(args, "--set", s)
	}
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(os.Environ(), src.env...)
	out, err := cmd.CombinedOutput()
	return string(out), exitCode(err)
}

// check-config prints the effective config with every secret masked,
// whichever way it was given: the API header keeps its name, the Redis URL
// its user and host.
func TestCheckConfigMasksSecrets(t *testing.T) {
	const (
		header = "Authorization: Bearer hunter2-header"
		pass   = "hunter2-pass"
		url    = "redis://mailguard:hunter2-url@127.0.0.1:6379/0"
	)
	for _, src := range []secretSource{
		{name: "file", file: "dovecot:\n  api_header: \"" + header + "\"\nstore:\n  redis:\n    password: " + pass + "\n    url: " + url + "\n"},
		{name: "set", sets: []string{"dovecot.api_header=" + header, "store.redis.password=" + pass, "store.redis.url=" + url}},
		{name: "env", env: []string{"MAILGUARD_DOVECOT_API_HEADER=" + header, "MAILGUARD_STORE_REDIS_PASSWORD=" + pass, "MAILGUARD_STORE_REDIS_URL=" + url}},
	} {
		t.Run(src.name, func(t *testing.T) {
			out, code := runWith(t, src, "check-config")
			if code != 0 {
				t.Fatalf("check-config: exit %d, %s", code, out)
			}
			if strings.Contains(out, "hunter2") {
				t.Errorf("check-config shows a secret:\n%s", out)
			}
			for _, want := range []string{
				"api_header: 'Authorization: *****'",
				"password: '*****'",
				"url: redis://mailguard:*****@127.0.0.1:6379/0",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("check-config output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// A Redis URL that does not parse (a raw % in the password) is a config
// error naming the key, with the password masked, for check-config and for
// serve alike (serve used to echo the whole URL in redisstore's error).
func TestUnparseableRedisURLMasked(t *testing.T) {
	const url = "redis://mailguard:hunter2%zz@127.0.0.1:6379/0"
	for _, src := range []secretSource{
		{name: "file", file: "store:\n  backend: redis\n  redis:\n    url: " + url + "\n"},
		{name: "set", sets: []string{"store.backend=redis", "store.redis.url=" + url}},
		{name: "env", env: []string{"MAILGUARD_STORE_BACKEND=redis", "MAILGUARD_STORE_REDIS_URL=" + url}},
	} {
		for _, cmd := range []string{"check-config", "serve"} {
			t.Run(src.name+"/"+cmd, func(t *testing.T) {
				out, code := runWith(t, src, cmd)
				if strings.Contains(out, "hunter2") {
					t.Errorf("%s shows the Redis password (exit %d):\n%s", cmd, code, out)
				}
				want := "store.redis.url: redis://*****@127.0.0.1:6379/0 is not a URL"
				if code != 2 || !strings.Contains(out, want) {
					t.Errorf("%s: exit %d, %q; want exit 2 and %q", cmd, code, out, want)
				}
			})
		}
	}
}

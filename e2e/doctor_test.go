package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// wiring is a good setup: private copies of the stock Postfix and Dovecot
// trees after `mailguard setup --write`, and the daemon they point at.
type wiring struct {
	d  *Daemon
	pf *stockPostfix
	dv *stockDovecot
}

func goodWiring(t *testing.T) *wiring {
	t.Helper()
	w := &wiring{pf: newStockPostfix(t), dv: newStockDovecot(t), d: setupDaemon(t)}
	w.d.MustCLI("setup", "postfix", "--write", "--config", w.d.Config, "--postfix-config", w.pf.Dir)
	w.d.MustCLI("setup", "dovecot", "--write", "--config", w.d.Config, "--dovecot-config", w.dv.Conf)
	return w
}

// clone copies the Postfix and Dovecot trees, so that a case can break its
// own copy.
func (w *wiring) clone(t *testing.T) (pfDir, dvConf string) {
	t.Helper()
	dir := t.TempDir()
	run(t, "cp", "-a", w.pf.Dir, filepath.Join(dir, "postfix"))
	run(t, "cp", "-a", filepath.Dir(w.dv.Conf), filepath.Join(dir, "dovecot"))
	return filepath.Join(dir, "postfix"), filepath.Join(dir, "dovecot", "dovecot.conf")
}

func (w *wiring) doctor(t *testing.T, pfDir, dvConf string, args ...string) (string, int) {
	t.Helper()
	out, err := w.d.CLI(append([]string{"doctor", "--config", w.d.Config, "--postfix-config", pfDir, "--dovecot-config", dvConf}, args...)...)
	return out, exitCode(err)
}

func fails(out string) []string {
	var f []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "FAIL ") {
			f = append(f, l)
		}
	}
	return f
}

// doctor is green on a good setup and names each fault of a broken one, in
// one line with its fix, exiting 1.
func TestDoctor(t *testing.T) {
	w := goodWiring(t)
	out, code := w.doctor(t, w.pf.Dir, w.dv.Conf)
	if code != 0 || len(fails(out)) != 0 || !strings.Contains(out, "ok: ") {
		t.Fatalf("doctor on the good setup: exit %d\n%s", code, out)
	}
	// Stock Dovecot refuses plaintext without TLS, and Debian's submission
	// wants STARTTLS: doctor says what simulate then needs, without failing.
	for _, want := range []string{"note dovecot: Dovecot refuses plaintext logins", "offers AUTH only after STARTTLS: `mailguard simulate` against it needs --starttls"} {
		if !strings.Contains(out, want) {
			t.Fatalf("doctor on the good setup does not say %q:\n%s", want, out)
		}
	}

	policy := "check_policy_service { inet:" + w.d.Postfix + ", timeout=5s, default_action=DUNNO }"
	postconf := func(args ...string) func(t *testing.T, pfDir, dvConf string) {
		return func(t *testing.T, pfDir, _ string) { run(t, "postconf", append([]string{"-c", pfDir}, args...)...) }
	}
	dovecotFile := func(text string) func(t *testing.T, pfDir, dvConf string) {
		return func(t *testing.T, _, dvConf string) {
			if err := os.WriteFile(filepath.Join(filepath.Dir(dvConf), "conf.d", "96-other.conf"), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name  string
		brk   func(t *testing.T, pfDir, dvConf string)
		args  []string
		want  []string // in the FAIL lines
		fails int
	}{
		{"policy service missing", postconf("-e", "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination"), nil,
			[]string{"main.cf smtpd_recipient_restrictions has no check_policy_service for mailguard", "Fix: mailguard setup postfix --write"}, 1},
		{"after permit_sasl_authenticated", postconf("-e", "smtpd_recipient_restrictions = permit_sasl_authenticated, "+policy), nil,
			[]string{"comes after permit_sasl_authenticated in main.cf smtpd_recipient_restrictions", "authenticated senders are never counted"}, 1},
		{"no default_action", postconf("-e", "smtpd_recipient_restrictions = check_policy_service inet:"+w.d.Postfix), nil,
			[]string{"in main.cf smtpd_recipient_restrictions has no default_action", "451 4.3.5"}, 1},
		{"listed twice", postconf("-e", "smtpd_client_restrictions = "+policy), nil,
			[]string{"is listed 2 times (main.cf smtpd_client_restrictions; main.cf smtpd_recipient_restrictions)"}, 1},
		{"submission override without it", postconf("-P", w.pf.Submission+"/inet/smtpd_recipient_restrictions=permit_sasl_authenticated,reject"), nil,
			[]string{"master.cf service " + w.pf.Submission + "/inet overrides smtpd_recipient_restrictions without mailguard's check_policy_service"}, 1},
		{"Dovecot API header mismatch", dovecotFile("auth_policy_server_api_header = Authorization: Bearer not-the-key\n"), nil,
			[]string{"auth_policy_server_api_header does not match mailguard's dovecot.api_header", "refuses the API header Dovecot sends (401)"}, 2},
		{"Dovecot URL elsewhere", dovecotFile("auth_policy_server_url = http://127.0.0.1:1/\n"), nil,
			[]string{"auth_policy_server_url is http://127.0.0.1:1/, but mailguard's dovecot.listen is " + w.d.Dovecot}, 1},
		{"Dovecot nonce placeholder", dovecotFile("auth_policy_hash_nonce = REPLACE_WITH_OUTPUT_OF_openssl_rand_-hex_32\n"), nil,
			[]string{"auth_policy_hash_nonce is still contrib's REPLACE_ placeholder"}, 1},
		// Postfix's SMTP AUTH through Dovecot, with Dovecot's anvil penalty
		// on (Dovecot's default): up to 15 s + auth_failure_delay + tarpit.
		{"SMTP AUTH through Dovecot over Postfix's limit", func(t *testing.T, pfDir, dvConf string) {
			postconf("-e", "smtpd_sasl_type = dovecot")(t, pfDir, dvConf)
			dovecotFile("service anvil {\n  unix_listener anvil-auth-penalty {\n    mode = 0600\n  }\n}\n")(t, pfDir, dvConf)
		}, nil, []string{"Postfix hands SMTP AUTH to Dovecot (", w.pf.Submission + "/inet", "anvil penalty 15s", "answers 454 instead of 535"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pfDir, dvConf := w.clone(t)
			tc.brk(t, pfDir, dvConf)
			out, code := w.doctor(t, pfDir, dvConf, tc.args...)
			f := fails(out)
			if code != 1 {
				t.Fatalf("doctor exit %d, want 1\n%s", code, out)
			}
			joined := strings.Join(f, "\n")
			for _, want := range tc.want {
				if !strings.Contains(joined, want) {
					t.Errorf("no FAIL line says %q:\n%s", want, out)
				}
			}
			if tc.fails > 0 && len(f) != tc.fails {
				t.Errorf("%d FAIL lines, want %d:\n%s", len(f), tc.fails, out)
			}
			for _, l := range f {
				if !strings.Contains(l, ". Fix: ") {
					t.Errorf("FAIL line without a fix: %q", l)
				}
				if strings.Contains(l, "e2e-setup-key") || strings.Contains(l, "not-the-key") {
					t.Errorf("FAIL line shows an API key: %q", l)
				}
			}
		})
	}

	// The daemon stopped: its three doors are named, the wiring is not blamed.
	w.d.Stop()
	out, code = w.doctor(t, w.pf.Dir, w.dv.Conf)
	f := fails(out)
	if code != 1 || len(f) != 3 {
		t.Fatalf("doctor with the daemon stopped: exit %d, %d FAIL lines, want 1 and 3:\n%s", code, len(f), out)
	}
	for i, want := range []string{"no answer on admin.socket " + w.d.Socket, "no policy answer on postfix.listen " + w.d.Postfix, "no answer on dovecot.listen " + w.d.Dovecot} {
		if !strings.Contains(f[i], want) {
			t.Errorf("FAIL line %d = %q, want it to say %q", i, f[i], want)
		}
	}
}

package e2e

import (
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite e2e/testdata/*.golden")

// explainNormal replaces what changes from run to run in explain's
// output: ids, times, durations measured on the real clock, the node.
var explainNormal = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b`), "TIME"},
	{regexp.MustCompile(`\bid [0-9a-z]{10}\b`), "id ID"},
	{regexp.MustCompile(`^[0-9a-z]{10} \(id\)`), "ID (id)"},
	{regexp.MustCompile(`The refusal [0-9a-z]{10}:`), "The refusal ID:"},
	{regexp.MustCompile(`[0-9hms.]+ left`), "D left"},
	{regexp.MustCompile(`failure\(s\) in [0-9hms.]+`), "failure(s) in D"},
	{regexp.MustCompile(`\[node [^,]+,`), "[node NODE,"},
}

func normaliseExplain(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		for _, n := range explainNormal {
			l = n.re.ReplaceAllString(l, n.with)
		}
		lines[i] = l
	}
	return strings.Join(lines, "\n")
}

var refRe = regexp.MustCompile(`\(ref ([0-9a-z]{10})\)`)

// TestExplainScriptedAttack: a scripted attack through the real Dovecot
// (IMAP) and Postfix (RCPT through the policy service), with audit.reference
// on: the refusals carry "(ref ID)" in Dovecot's [ALERT] and Postfix's 421,
// and `mailguard explain` of the address, the user and the reference tells
// the story, against e2e/testdata/explain-*.golden (-update rewrites them).
func TestExplainScriptedAttack(t *testing.T) {
	d := NewDaemon(t,
		"dovecot.api_header="+testAPIKey,
		"jails.dovecot.maxretry=3",
		"jails.dovecot-user.maxretry=20",
		"audit.user=plain",
		"audit.reference=true",
	)
	d.Start()
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{})
	pf := StartPostfix(t, d.Postfix)
	const attacker, home = "127.0.0.2", "127.0.0.4"

	if r := imapLogin(t, dv.IMAP, home, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("login from %s = %q", home, r)
	}
	for i := 1; i <= 3; i++ {
		if r := imapLogin(t, dv.IMAP, attacker, testUser, "wrong"); !strings.HasPrefix(r, "a1 NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("wrong password %d = %q", i, r)
		}
	}
	r := imapLogin(t, dv.IMAP, attacker, testUser, testPassword)
	m := refRe.FindStringSubmatch(r)
	if !strings.HasPrefix(r, "a1 NO [ALERT] "+rejectMsg) || m == nil {
		t.Fatalf("right password from banned %s = %q, want [ALERT] %s (ref ID)", attacker, r, rejectMsg)
	}
	imapRef := m[1]
	pr, closed := rcpt(t, pf.Addr, attacker)
	if !strings.HasPrefix(pr, "421 4.7.1") || !closed || !refRe.MatchString(pr) {
		t.Fatalf("RCPT from banned %s = %q closed=%v, want 421 4.7.1 ... (ref ID)", attacker, pr, closed)
	}
	if !strings.Contains(d.Log(), "ref="+imapRef) {
		t.Errorf("daemon log has no refusal line with ref=%s", imapRef)
	}

	for _, tc := range []struct{ name, target string }{
		{"address", attacker},
		{"user", testUser},
		{"ref", imapRef},
	} {
		out := d.MustCLI("explain", tc.target)
		got := normaliseExplain(out)
		path := "testdata/explain-" + tc.name + ".golden"
		if *updateGolden {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("mailguard explain %s:\n%s\nwant (%s):\n%s", tc.target, got, path, want)
		}
	}
	if out := d.MustCLI("explain", "--json", attacker); !strings.Contains(out, `"kind": "refusal"`) || !strings.Contains(out, `"source": "postfix"`) {
		t.Errorf("explain --json lacks the Postfix refusal:\n%s", out)
	}
}

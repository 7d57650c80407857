package main

import (
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/contrib"
)

// stockPolicy is contrib's check_policy_service element at the default
// postfix.listen (timeout=5s, default_action=DUNNO as shipped).
var stockPolicy = func() string {
	e, err := contribPolicy("inet:127.0.0.1:10028")
	if err != nil {
		panic(err)
	}
	return e.String()
}()

func TestParseList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"permit_sasl_authenticated,reject", []string{"permit_sasl_authenticated", "reject"}},
		{"permit_mynetworks permit_sasl_authenticated\n    defer_unauth_destination", []string{"permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination"}},
		{stockPolicy + ", permit_sasl_authenticated, reject", []string{stockPolicy, "permit_sasl_authenticated", "reject"}},
		{"check_policy_service inet:127.0.0.1:10028 check_client_access hash:/etc/postfix/access, reject_rbl_client zen.spamhaus.org",
			[]string{"check_policy_service inet:127.0.0.1:10028", "check_client_access hash:/etc/postfix/access", "reject_rbl_client zen.spamhaus.org"}},
		{"$mua_recipient_restrictions", []string{"$mua_recipient_restrictions"}},
	} {
		var got []string
		for _, e := range parseList(tc.in) {
			got = append(got, e.String())
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("parseList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestEndpoints(t *testing.T) {
	const queue = "/var/spool/postfix"
	for _, tc := range []struct {
		listen, server string
		match          bool
	}{
		{"127.0.0.1:10028", "inet:127.0.0.1:10028", true},
		{"127.0.0.1:10028", "inet:localhost:10028", true},
		{"inet:127.0.0.1:10028", "inet:127.0.0.1:10028", true},
		{"0.0.0.0:10028", "inet:127.0.0.1:10028", true},
		{"127.0.0.1:10028", "inet:127.0.0.1:10023", false},
		{"[::1]:10028", "inet:[::1]:10028", true},
		{"unix:/var/spool/postfix/private/mailguard", "unix:private/mailguard", true},
		{"unix:/var/spool/postfix/private/mailguard", "private/mailguard", true},
		{"unix:/var/spool/postfix/private/mailguard", "unix:/var/spool/postfix/private/mailguard", true},
		{"unix:/run/mailguard/policy", "unix:private/mailguard", false},
		{"127.0.0.1:10028", "unix:private/mailguard", false},
	} {
		l, err := listenEndpoint(tc.listen)
		if err != nil {
			t.Fatalf("listenEndpoint(%q): %v", tc.listen, err)
		}
		if got := l.matches(policyEndpoint(tc.server, queue)); got != tc.match {
			t.Errorf("listen %q matches server %q = %v, want %v", tc.listen, tc.server, got, tc.match)
		}
	}
	for _, tc := range []struct{ listen, want string }{
		{"127.0.0.1:10028", "inet:127.0.0.1:10028"},
		{":10028", "inet:127.0.0.1:10028"},
		{"[::1]:10028", "inet:[::1]:10028"},
		{"unix:/var/spool/postfix/private/mailguard", "unix:private/mailguard"},
		{"unix:/run/mailguard/policy.sock", "unix:/run/mailguard/policy.sock"},
	} {
		l, _ := listenEndpoint(tc.listen)
		if got := postfixServer(l, "/var/spool/postfix"); got != tc.want {
			t.Errorf("postfixServer(%q) = %q, want %q", tc.listen, got, tc.want)
		}
	}
}

// The restriction setup writes is contrib/postfix/main.cf's, with this
// host's server in it.
func TestContribPolicy(t *testing.T) {
	e, err := contribPolicy("unix:private/mailguard")
	if err != nil {
		t.Fatal(err)
	}
	server, attrs := policyArg(e.arg)
	if e.name != "check_policy_service" || server != "unix:private/mailguard" {
		t.Fatalf("contribPolicy = %q", e)
	}
	if v, ok := policyAttr(attrs, "default_action"); !ok || v != "DUNNO" {
		t.Fatalf("contribPolicy = %q: want default_action=DUNNO", e)
	}
	b, _ := contrib.File(contrib.PostfixMain)
	if want := strings.Replace(e.String(), "unix:private/mailguard", "inet:127.0.0.1:10028", 1); !strings.Contains(string(b), want) {
		t.Fatalf("contrib/postfix/main.cf does not hold %q", want)
	}
}

// debian is Postfix as Debian 12 ships it with submission and submissions
// enabled: main.cf without recipient restrictions, both entries overriding
// them with permit_sasl_authenticated,reject.
func debian() *postfixConf {
	pc := &postfixConf{Dir: "/etc/postfix", QueueDir: "/var/spool/postfix", Main: map[string]string{}, MainX: map[string]string{}}
	for _, p := range restrictionLists {
		pc.Main[p], pc.MainX[p] = "", ""
	}
	pc.Main["smtpd_relay_restrictions"] = "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"
	pc.MainX["smtpd_relay_restrictions"] = pc.Main["smtpd_relay_restrictions"]
	pc.Services = []smtpdService{{Name: "smtp", Type: "inet", Over: map[string]string{}, OverX: map[string]string{}}}
	for _, name := range []string{"submission", "submissions"} {
		s := smtpdService{Name: name, Type: "inet", Over: map[string]string{
			"smtpd_client_restrictions": "", "smtpd_helo_restrictions": "", "smtpd_sender_restrictions": "",
			"smtpd_relay_restrictions": "", "smtpd_recipient_restrictions": "permit_sasl_authenticated,reject",
			"smtpd_sasl_auth_enable": "yes", "smtpd_tls_auth_only": "yes",
		}, OverX: map[string]string{}}
		for k, v := range s.Over {
			s.OverX[k] = v
		}
		pc.Services = append(pc.Services, s)
	}
	return pc
}

// apply returns pc after changes, as postconf would leave it.
func apply(pc *postfixConf, changes []postfixChange) *postfixConf {
	for _, ch := range changes {
		if ch.Service == nil {
			pc.Main[ch.Param], pc.MainX[ch.Param] = ch.New, ch.New
			continue
		}
		for i := range pc.Services {
			if pc.Services[i].key() == ch.Service.key() {
				pc.Services[i].Over[ch.Param], pc.Services[i].OverX[ch.Param] = ch.New, ch.New
			}
		}
	}
	return pc
}

func TestPlanPostfix(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pc     func() *postfixConf
		refs   map[string]string
		listen string
		want   []string // where: param = new
	}{
		{"stock Debian", debian, nil, "127.0.0.1:10028", []string{
			"main.cf: smtpd_recipient_restrictions = " + stockPolicy,
			"master.cf service submission/inet: smtpd_recipient_restrictions = " + stockPolicy + ", permit_sasl_authenticated, reject",
			"master.cf service submissions/inet: smtpd_recipient_restrictions = " + stockPolicy + ", permit_sasl_authenticated, reject",
		}},
		{"unix socket", func() *postfixConf {
			pc := debian()
			pc.Services = pc.Services[:1]
			return pc
		}, nil, "unix:/var/spool/postfix/private/mailguard", []string{
			"main.cf: smtpd_recipient_restrictions = check_policy_service { unix:private/mailguard, timeout=5s, default_action=DUNNO }",
		}},
		{"already right", func() *postfixConf {
			pc := debian()
			pc.Services = pc.Services[:1]
			pc.Main[recipientList] = stockPolicy + ", permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
			pc.MainX[recipientList] = pc.Main[recipientList]
			return pc
		}, nil, "127.0.0.1:10028", nil},
		{"after permit, without default_action, and in the client list too", func() *postfixConf {
			pc := debian()
			pc.Services = pc.Services[:1]
			pc.Main[recipientList] = "permit_sasl_authenticated, check_policy_service inet:127.0.0.1:10028, reject_unauth_destination"
			pc.Main["smtpd_client_restrictions"] = "check_policy_service inet:127.0.0.1:10028, check_policy_service inet:127.0.0.1:10023"
			pc.MainX[recipientList], pc.MainX["smtpd_client_restrictions"] = pc.Main[recipientList], pc.Main["smtpd_client_restrictions"]
			return pc
		}, nil, "127.0.0.1:10028", []string{
			"main.cf: smtpd_client_restrictions = check_policy_service inet:127.0.0.1:10023",
			"main.cf: smtpd_recipient_restrictions = " + stockPolicy + ", permit_sasl_authenticated, reject_unauth_destination",
		}},
		{"$mua_recipient_restrictions, as Debian's master.cf suggests", func() *postfixConf {
			pc := debian()
			pc.Main[recipientList] = stockPolicy
			pc.MainX[recipientList] = stockPolicy
			for i := 1; i < 3; i++ {
				pc.Services[i].Over[recipientList] = "$mua_recipient_restrictions"
				pc.Services[i].OverX[recipientList] = "permit_sasl_authenticated, reject"
			}
			return pc
		}, map[string]string{"mua_recipient_restrictions": "permit_sasl_authenticated, reject"}, "127.0.0.1:10028", []string{
			"main.cf: mua_recipient_restrictions = " + stockPolicy + ", permit_sasl_authenticated, reject",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := tc.pc()
			changes, err := planPostfix(pc, tc.refs, tc.listen)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ch := range changes {
				got = append(got, ch.where()+": "+ch.Param+" = "+ch.New)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("planPostfix =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if tc.refs != nil {
				return // the model does not expand references
			}
			// Applied, the plan leaves nothing for doctor to complain about
			// and nothing more to do.
			after := apply(pc, changes)
			for _, f := range checkPostfix(after, tc.listen, "fix") {
				if f.problem {
					t.Errorf("after the plan, doctor says %s", f)
				}
			}
			if again, _ := planPostfix(after, nil, tc.listen); len(again) != 0 {
				t.Errorf("a second plan changes %d parameters", len(again))
			}
		})
	}
}

func TestMasterLine(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"permit_sasl_authenticated,reject", "-o smtpd_recipient_restrictions=permit_sasl_authenticated,reject"},
		{stockPolicy + ", reject", "-o { smtpd_recipient_restrictions = " + stockPolicy + ", reject }"},
	} {
		if got := masterLine(postfixChange{Param: recipientList, New: tc.in}); got != tc.want {
			t.Errorf("masterLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Both contrib Dovecot files fill in: the three values set, no placeholder
// left outside comments, every other line contrib's own.
func TestRenderDovecot(t *testing.T) {
	values := map[string]string{
		dovecotURLSetting: "http://127.0.0.1:10029/", dovecotHeaderSetting: "Authorization: Bearer k", dovecotNonceSetting: "n0nce",
	}
	for _, v := range [][2]int{{2, 3}, {2, 4}} {
		name, text, err := contrib.Dovecot(v[0], v[1])
		if err != nil {
			t.Fatal(err)
		}
		got, err := renderDovecot(text, values)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		in, out := strings.Split(string(text), "\n"), strings.Split(got, "\n")
		if len(in) != len(out) {
			t.Fatalf("%s: %d lines became %d", name, len(in), len(out))
		}
		set := map[string]int{}
		for i, l := range out {
			k, v, _ := strings.Cut(l, " = ")
			if want, ok := values[k]; ok {
				set[k]++
				if v != want {
					t.Errorf("%s line %d = %q", name, i+1, l)
				}
				continue
			}
			if l != in[i] {
				t.Errorf("%s line %d changed: %q -> %q", name, i+1, in[i], l)
			}
			if !strings.HasPrefix(strings.TrimSpace(l), "#") && strings.Contains(l, "REPLACE_") {
				t.Errorf("%s line %d keeps a placeholder: %q", name, i+1, l)
			}
		}
		for k := range values {
			if set[k] != 1 {
				t.Errorf("%s sets %s %d times", name, k, set[k])
			}
		}
	}
	if _, err := renderDovecot([]byte("auth_policy_server_url = x\nauth_policy_server_api_header = x\nauth_policy_hash_nonce = x\nother = REPLACE_ME\n"), values); err == nil || !strings.Contains(err.Error(), "REPLACE_ME") {
		t.Errorf("an unknown placeholder: err = %v, want it named", err)
	}
	if _, err := renderDovecot([]byte("auth_policy_server_url = x\n"), values); err == nil {
		t.Errorf("a file without the header and nonce settings: no error")
	}
}

func TestDovecotDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  bool
	}{
		{"2 secs", 2 * time.Second, false}, {"0", 0, false}, {"", 0, false}, {"500 msecs", 500 * time.Millisecond, false},
		{"2s", 2 * time.Second, false}, {"1 min", time.Minute, false}, {"3", 3 * time.Second, false},
		{"soon", 0, true}, {"2 fortnights", 0, true},
	} {
		got, err := dovecotDuration(tc.in)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("dovecotDuration(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestDovecotURL(t *testing.T) {
	for _, tc := range []struct{ listen, want string }{
		{"127.0.0.1:10029", "http://127.0.0.1:10029/"},
		{"0.0.0.0:10029", "http://127.0.0.1:10029/"},
		{"[::1]:10029", "http://[::1]:10029/"},
	} {
		if got, err := dovecotURL(tc.listen); err != nil || got != tc.want {
			t.Errorf("dovecotURL(%q) = %q, %v; want %q", tc.listen, got, err, tc.want)
		}
	}
	if _, err := dovecotURL("unix:/run/mailguard/dovecot.sock"); err == nil {
		t.Errorf("dovecotURL of a unix socket: no error")
	}
}

package e2e

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/logwatch/filter"
)

// postscreen in front of the real Postfix: clients that talk before the
// greeting, hang up, pipeline, speak HTTP or send bare newlines, each from
// its own loopback address; the shipped postscreen filter takes each one's
// address from the lines postscreen really writes, and nobody else's.
// MAILGUARD_RECORD_POSTSCREEN=FILE keeps the log (how
// logwatch/filter/testdata/postscreen.log was recorded).
func TestPostscreenLinesMatchFilter(t *testing.T) {
	p := StartPostfix(t, "127.0.0.1:9", PostfixOptions{Set: []string{
		"postscreen_access_list=",
		"postscreen_greet_wait=1s",
		"postscreen_greet_action=enforce",
		"postscreen_pipelining_enable=yes",
		"postscreen_pipelining_action=enforce",
		"postscreen_non_smtp_command_enable=yes",
		"postscreen_non_smtp_command_action=drop",
		"postscreen_bare_newline_enable=yes",
		"postscreen_bare_newline_action=enforce",
		"postscreen_cache_map=btree:$data_directory/postscreen_cache",
	}})
	postfix := testenv.Command(t, "postfix")
	master, err := os.ReadFile(p.Conf + "/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	smtp := p.Addr + " inet n - n - - smtpd"
	if !strings.Contains(string(master), smtp) {
		t.Fatalf("master.cf has no %q", smtp)
	}
	ms := strings.Replace(string(master), smtp, p.Addr+" inet n - n - 1 postscreen\n"+
		"smtpd pass - - n - - smtpd\n"+
		"dnsblog unix - - n - 0 dnsblog\n"+
		"tlsproxy unix - - n - 0 tlsproxy", 1)
	writeFile(t, p.Conf+"/master.cf", ms)
	if out, err := exec.Command(postfix, "-c", p.Conf, "reload").CombinedOutput(); err != nil {
		t.Fatalf("postfix reload: %v\n%s", err, out)
	}
	// postscreen answers with a multi-line greeting ("220-"): wait for it
	// (each probe that leaves early is a HANGUP from 127.0.0.30).
	deadline := time.Now().Add(20 * time.Second)
	probe := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.30")}}
	for {
		if c, err := probe.Dial("tcp", p.Addr); err == nil {
			c.SetDeadline(time.Now().Add(3 * time.Second))
			l, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(l, "220-") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("postscreen did not take over the smtp port")
		}
		time.Sleep(200 * time.Millisecond)
	}

	dial := func(src string) (net.Conn, *bufio.Reader) {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", p.Addr)
		if err != nil {
			t.Fatalf("dial from %s: %v", src, err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(15 * time.Second))
		return c, bufio.NewReader(c)
	}
	greeting := func(rd *bufio.Reader) {
		t.Helper()
		for {
			l, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("greeting: %v", err)
			}
			if strings.HasPrefix(l, "220 ") {
				return
			}
		}
	}
	drain := func(c net.Conn, rd *bufio.Reader) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, err := rd.ReadString('\n'); err != nil {
				return
			}
		}
	}
	// PREGREET: talks before the greeting ends; the text claims another address.
	c, rd := dial("127.0.0.31")
	c.Write([]byte("EHLO [1.2.3.4]\r\n"))
	drain(c, rd)
	c.Close()
	// HANGUP: leaves before the greeting ends.
	c, _ = dial("127.0.0.32")
	c.Close()
	// COMMAND PIPELINING: EHLO and MAIL in one write.
	c, rd = dial("127.0.0.33")
	greeting(rd)
	c.Write([]byte("EHLO client.example.net\r\nMAIL FROM:<x@[1.2.3.4]>\r\n"))
	drain(c, rd)
	c.Close()
	// NON-SMTP COMMAND: an HTTP request.
	c, rd = dial("127.0.0.34")
	greeting(rd)
	c.Write([]byte("GET / HTTP/1.0 [1.2.3.4]\r\n"))
	drain(c, rd)
	c.Close()
	// BARE NEWLINE.
	c, rd = dial("127.0.0.35")
	greeting(rd)
	c.Write([]byte("EHLO client.example.net\n"))
	drain(c, rd)
	c.Close()
	// A client that behaves: no failure.
	c, rd = dial("127.0.0.36")
	greeting(rd)
	c.Write([]byte("EHLO good.example.net\r\n"))
	rd.ReadString('\n')
	c.Write([]byte("QUIT\r\n"))
	drain(c, rd)
	c.Close()

	want := map[string]string{
		"127.0.0.30": "HANGUP", "127.0.0.31": "PREGREET", "127.0.0.32": "HANGUP", "127.0.0.33": "COMMAND PIPELINING",
		"127.0.0.34": "NON-SMTP COMMAND", "127.0.0.35": "BARE NEWLINE",
	}
	f, err := filter.LoadShipped("postscreen", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var log []byte
	got := map[string]string{}
	deadline = time.Now().Add(20 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		if log, err = os.ReadFile(p.Log); err != nil {
			t.Fatal(err)
		}
		got = map[string]string{}
		tr := f.NewTracker()
		for _, l := range strings.Split(string(log), "\n") {
			for _, fl := range tr.Line(l, time.Now()) {
				got[fl.Host.String()] += l + "\n"
			}
		}
	}
	if rec := os.Getenv("MAILGUARD_RECORD_POSTSCREEN"); rec != "" {
		os.WriteFile(rec, log, 0o644)
	}
	for host, event := range want {
		if !strings.Contains(got[host], event) {
			t.Errorf("%s: want a failure from a %s line, got %q", host, event, got[host])
		}
	}
	for host, l := range got {
		if _, ok := want[host]; !ok {
			t.Errorf("failure for %s, who did nothing wrong: %q", host, l)
		}
	}
	if t.Failed() {
		t.Logf("maillog:\n%s", log)
	}
}

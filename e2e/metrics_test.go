package e2e

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// A daemon with only 256 file descriptors (and no way to raise them) warns
// at start, and 600 idle connections to metrics.listen neither use up its
// descriptors nor stop the Postfix and Dovecot front ends or a scrape.
func TestMetricsFloodLowFileLimit(t *testing.T) {
	testenv.Root(t)
	prlimit := testenv.Command(t, "prlimit")
	setpriv := testenv.Command(t, "setpriv")
	const limit, flood = 256, 600
	d := NewDaemon(t, "log.level=info")
	d.Wrap = []string{prlimit, "--nofile=" + strconv.Itoa(limit) + ":" + strconv.Itoa(limit), "--",
		setpriv, "--bounding-set=-sys_resource", "--"}
	d.Start()
	if !strings.Contains(d.Log(), "the open file limit is below what the connection caps may use") || !strings.Contains(d.Log(), "limit="+strconv.Itoa(limit)) {
		t.Errorf("no warning about the low open file limit:\n%s", d.Log())
	}

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range flood {
		c, err := net.DialTimeout("tcp", d.Metrics, 10*time.Second)
		if err != nil {
			t.Fatalf("flood connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	fds, _ := os.ReadDir("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/fd")
	t.Logf("daemon holds %d file descriptors with %d idle metrics connections open (limit %d)", len(fds), flood, limit)
	if len(fds) >= limit-8 {
		t.Errorf("daemon holds %d file descriptors of %d", len(fds), limit)
	}

	p := dialPolicy(t, d.Postfix)
	if got := p.mustAsk(t, "192.0.2.77"); got != "DUNNO" {
		t.Errorf("policy request during the flood = %q, want DUNNO", got)
	}
	if got := dovecotAllow(t, d.Dovecot, "192.0.2.77", "flood"); got != 0 {
		t.Errorf("dovecot allow during the flood = %d, want 0", got)
	}
	if code, body := healthz(t, d.Metrics); code != 200 {
		t.Errorf("/healthz during the flood = %d %q", code, body)
	}
	closed := 0
	for _, c := range conns[:flood-64] {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil && !os.IsTimeout(err) {
			closed++
		}
	}
	if closed != flood-64 {
		t.Errorf("%d of the %d oldest flood connections were closed by the daemon, want all", closed, flood-64)
	}
	if strings.Contains(d.Log(), "too many open files") {
		t.Errorf("the daemon ran out of file descriptors:\n%s", d.Log())
	}
}

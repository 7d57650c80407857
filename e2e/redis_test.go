package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// The Redis tests run real daemons against real redis-server processes that
// they start themselves (redistest): without redis-server they skip, and
// under CI=true they fail. They need no root.

const (
	policyRefused  = "421 4.7.1"             // postfix.reject_action's start
	policyFailDown = "DEFER_IF_PERMIT 4.3.0" // policyd.DefaultFailAction's start
)

// redisSets are the --set overrides that put a daemon on the Redis at addr
// under its own key prefix.
func redisSets(addr, prefix string, more ...string) []string {
	return append([]string{
		"store.backend=redis",
		"store.redis.url=redis://" + addr + "/0",
		"store.redis.prefix=" + prefix,
	}, more...)
}

// redisPrefix returns a key prefix no other test run uses.
func redisPrefix() string {
	return "e2e" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
}

// Failures reported to two nodes add up in the shared Redis; a ban made on
// one node refuses the client on the other, is listed by the other's status,
// and an unban on the other lifts it everywhere.
func TestRedisTwoNodes(t *testing.T) {
	srv := redistest.StartServer(t, redistest.Config{})
	// store.timeout is generous: on a loaded 2-core machine with -race a
	// slow Hit must not be mistaken for a lost failure.
	sets := redisSets(srv.Addr(), redisPrefix(), "jails.dovecot.maxretry=4", "store.timeout=2s")
	a := NewDaemon(t, sets...)
	a.Start()
	b := NewDaemon(t, sets...)
	b.Start()
	pa, pb := dialPolicy(t, a.Postfix), dialPolicy(t, b.Postfix)

	const attacker, bystander, manual = "192.0.2.10", "192.0.2.11", "192.0.2.20"
	nodes := []*Daemon{a, b}
	for i := 1; i <= 4; i++ {
		n := nodes[(i-1)%2]
		dovecotReport(t, n.Dovecot, attacker, fmt.Sprintf("e2e-two-nodes-%d", i))
		if i < 4 {
			for name, p := range map[string]*policyConn{"A": pa, "B": pb} {
				if got := p.mustAsk(t, attacker); got != "DUNNO" {
					t.Fatalf("after %d of 4 failures, node %s answers %q for %s, want DUNNO", i, name, got, attacker)
				}
			}
		}
	}
	// The 4th failure (reported to B) bans in the same round trip: no wait.
	for name, p := range map[string]*policyConn{"B": pb, "A": pa} {
		if got := p.mustAsk(t, attacker); !strings.HasPrefix(got, policyRefused) {
			t.Fatalf("after 4 failures split over A and B, node %s answers %q for %s, want %s ...", name, got, attacker, policyRefused)
		}
	}
	if got := pb.mustAsk(t, bystander); got != "DUNNO" {
		t.Fatalf("node B answers %q for %s, which never failed; want DUNNO", got, bystander)
	}
	if out := a.MustCLI("status", "dovecot"); !strings.Contains(out, attacker) {
		t.Fatalf("status dovecot on A does not list %s, banned by B's failure:\n%s", attacker, out)
	}

	// A manual ban through A refuses at B.
	if out := a.MustCLI("ban", manual); !strings.Contains(out, "banned "+manual) {
		t.Fatalf("ban %s on A: %q", manual, out)
	}
	took := pollPolicy(t, pb, manual, time.Second, func(a string) bool { return strings.HasPrefix(a, policyRefused) })
	t.Logf("ban on A refused at B after %v", took)
	if out := b.MustCLI("status"); !strings.Contains(out, manual) {
		t.Fatalf("status on B does not list %s, banned on A:\n%s", manual, out)
	}

	// An unban through B lifts it at A.
	if out := b.MustCLI("unban", manual); !strings.Contains(out, "unbanned "+manual) {
		t.Fatalf("unban %s on B: %q", manual, out)
	}
	took = pollPolicy(t, pa, manual, 5*time.Second, func(a string) bool { return a == "DUNNO" })
	t.Logf("unban on B lifted at A after %v", took)
	if out := a.MustCLI("status"); strings.Contains(out, manual) {
		t.Fatalf("status on A still lists %s after the unban on B:\n%s", manual, out)
	}
	// The unban lifted the manual ban only.
	if got := pa.mustAsk(t, attacker); !strings.HasPrefix(got, policyRefused) {
		t.Fatalf("after unbanning %s, node A answers %q for %s, want it still refused", manual, got, attacker)
	}
	for _, d := range nodes {
		if n := metricSum(t, d.Metrics, "mailguard_store_errors_total", ""); n != 0 {
			t.Errorf("mailguard_store_errors_total = %v on a node whose Redis never failed, want 0", n)
		}
	}
}

// Redis paused, then killed, under load: every policy request is still
// answered, soon, per store.fail_mode; /healthz says degraded and the store
// error counter grows. Redis restarted on its AOF: the node recovers alone,
// and a ban made before the outage refuses again.
func TestRedisOutage(t *testing.T) {
	for _, mode := range []string{"open", "closed"} {
		t.Run(mode, func(t *testing.T) { testRedisOutage(t, mode) })
	}
}

func testRedisOutage(t *testing.T, mode string) {
	const (
		banned     = "192.0.2.30"
		workers    = 8
		maxLatency = 2 * time.Second // store.timeout is 300ms: this is "never hangs", not speed
	)
	downAnswer := "DUNNO"
	verdict := "fail-open"
	if mode == "closed" {
		downAnswer, verdict = policyFailDown, "fail-closed"
	}
	isDown := func(action string) bool { return action == downAnswer || strings.HasPrefix(action, downAnswer+" ") }
	srv := redistest.StartServer(t, redistest.Config{AppendOnly: true})
	d := NewDaemon(t, redisSets(srv.Addr(), redisPrefix(),
		"store.timeout=300ms", "store.fail_mode="+mode, "log.level=info")...)
	d.Start()

	d.MustCLI("ban", banned)
	probe := dialPolicy(t, d.Postfix)
	if got := probe.mustAsk(t, banned); !strings.HasPrefix(got, policyRefused) {
		t.Fatalf("before the outage, %s = %q, want %s ...", banned, got, policyRefused)
	}
	if code, body := healthz(t, d.Metrics); code != http.StatusOK {
		t.Fatalf("before the outage, /healthz = %d %q, want 200", code, body)
	}
	errs0 := metricSum(t, d.Metrics, "mailguard_store_errors_total", `frontend="postfix"`)
	down0 := metricSum(t, d.Metrics, "mailguard_requests_total", `verdict="`+verdict+`"`)

	l := startPolicyLoad(t, d.Postfix, workers)
	l.waitAnswers(t, 10*workers, 10*time.Second)

	srv.Pause()
	paused := time.Now()
	code, body := waitHealthz(t, d.Metrics, http.StatusServiceUnavailable, 10*time.Second)
	if !strings.HasPrefix(body, "degraded") {
		t.Errorf("/healthz with Redis paused = %d %q, want 503 degraded: ...", code, body)
	}
	if got := probe.mustAsk(t, banned); !isDown(got) {
		t.Errorf("with Redis paused, %s = %q, want %q (fail_mode %s)", banned, got, downAnswer, mode)
	}
	l.waitAnswers(t, 10*workers, 10*time.Second)
	time.Sleep(300 * time.Millisecond)

	killing := time.Now()
	srv.Kill()
	killed := time.Now()
	code, body = waitHealthz(t, d.Metrics, http.StatusServiceUnavailable, 10*time.Second)
	if !strings.HasPrefix(body, "degraded") {
		t.Errorf("/healthz with Redis killed = %d %q, want 503 degraded: ...", code, body)
	}
	if got := probe.mustAsk(t, banned); !isDown(got) {
		t.Errorf("with Redis killed, %s = %q, want %q (fail_mode %s)", banned, got, downAnswer, mode)
	}
	// Dovecot gets its fail-mode answer too: allow (0) or a temporary refusal (-1).
	wantStatus := 0
	if mode == "closed" {
		wantStatus = -1
	}
	start := time.Now()
	if got := dovecotAllow(t, d.Dovecot, banned, "e2e-outage"); got != wantStatus {
		t.Errorf("with Redis killed, Dovecot allow for %s = status %d, want %d (fail_mode %s)", banned, got, wantStatus, mode)
	}
	if took := time.Since(start); took > maxLatency {
		t.Errorf("with Redis killed, Dovecot allow took %v, want at most %v", took, maxLatency)
	}
	l.waitAnswers(t, 10*workers, 10*time.Second)
	time.Sleep(time.Second)

	restarting := time.Now()
	srv.Restart()
	took := pollPolicy(t, probe, banned, 20*time.Second, func(a string) bool { return strings.HasPrefix(a, policyRefused) })
	t.Logf("after Redis restarted, the ban made before the outage refused again after %v", took)
	waitHealthz(t, d.Metrics, http.StatusOK, 20*time.Second)
	l.waitAnswers(t, 10*workers, 10*time.Second)
	conns := l.stop(t)

	// Every load connection survived and works again.
	var slowest time.Duration
	for i, c := range conns {
		took := pollPolicy(t, c, loadClient(i), 10*time.Second, func(a string) bool { return a == "DUNNO" })
		slowest = max(slowest, took)
	}
	t.Logf("every load connection answered DUNNO again within %v", slowest)

	// Every request of the load was answered (a read error or a timeout
	// stops the worker and is reported by stop), soon, and as expected.
	var inPause, inKill, slow int
	var worst time.Duration
	for _, s := range l.samples() {
		worst = max(worst, s.lat)
		if s.lat > maxLatency {
			slow++
		}
		if s.action != "DUNNO" && !isDown(s.action) {
			t.Errorf("load request at %v answered %q, want DUNNO or %q", s.sent.Sub(paused), s.action, downAnswer)
		}
		// Redis cannot answer anything sent after SIGSTOP took hold (allow
		// it 100ms) and before SIGCONT+SIGKILL, nor after the kill and
		// before the restart. A request is decided within store.timeout, so
		// one sent more than edge before SIGCONT or the restart was
		// answered before Redis could run again.
		const edge = 400 * time.Millisecond
		switch {
		case s.sent.After(paused.Add(100*time.Millisecond)) && s.sent.Before(killing.Add(-edge)):
			inPause++
		case s.sent.After(killed) && s.sent.Before(restarting.Add(-edge)):
			inKill++
		default:
			continue
		}
		if !isDown(s.action) {
			t.Errorf("load request sent %v after the pause, with Redis down, answered %q, want %q", s.sent.Sub(paused), s.action, downAnswer)
		}
	}
	t.Logf("%d load requests, %d with Redis paused, %d with Redis killed, slowest %v", len(l.samples()), inPause, inKill, worst)
	if slow > 0 {
		t.Errorf("%d load requests took longer than %v (slowest %v): want every answer within store.timeout and a margin", slow, maxLatency, worst)
	}
	if inPause == 0 || inKill == 0 {
		t.Errorf("load sent %d requests while Redis was paused and %d while it was killed, want some of each", inPause, inKill)
	}
	if errs := metricSum(t, d.Metrics, "mailguard_store_errors_total", `frontend="postfix"`); errs <= errs0 {
		t.Errorf("mailguard_store_errors_total{frontend=\"postfix\"} = %v, was %v before the outage: want it increased", errs, errs0)
	}
	if n := metricSum(t, d.Metrics, "mailguard_requests_total", `verdict="`+verdict+`"`); n <= down0 {
		t.Errorf("mailguard_requests_total{verdict=%q} = %v, was %v before the outage: want it increased", verdict, n, down0)
	}
}

// policyConn is one persistent connection to a Postfix policy service.
type policyConn struct {
	c  net.Conn
	rd *bufio.Reader
}

func dialPolicy(t *testing.T, addr string) *policyConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial policy service %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &policyConn{c: c, rd: bufio.NewReader(c)}
}

// ask sends an RCPT-stage request for client and returns the action. A
// reply must come within 5s.
func (p *policyConn) ask(client string) (string, error) {
	p.c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n" +
		"client_address=" + client + "\nclient_name=unknown\nhelo_name=client.example.net\n" +
		"sender=a@example.net\nrecipient=postmaster@example.org\n\n"
	if _, err := io.WriteString(p.c, req); err != nil {
		return "", err
	}
	var action string
	for {
		line, err := p.rd.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("reading policy reply: %w", err)
		}
		line = strings.TrimRight(line, "\n")
		if line == "" {
			if action == "" {
				return "", fmt.Errorf("policy reply without action=")
			}
			return action, nil
		}
		if a, ok := strings.CutPrefix(line, "action="); ok {
			action = a
		}
	}
}

func (p *policyConn) mustAsk(t *testing.T, client string) string {
	t.Helper()
	a, err := p.ask(client)
	if err != nil {
		t.Fatalf("policy request for %s: %v", client, err)
	}
	return a
}

// pollPolicy asks for client until ok(action) or within passes, and
// returns how long it took.
func pollPolicy(t *testing.T, p *policyConn, client string, within time.Duration, ok func(string) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for {
		last = p.mustAsk(t, client)
		if ok(last) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("policy answer for %s still %q after %v", client, last, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dovecotReport reports one failed IMAP login from remote, as Dovecot's
// auth_policy_report_after_auth does.
func dovecotReport(t *testing.T, addr, remote, session string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"device_id": "", "login": "u@example.org", "protocol": "imap", "pwhash": "abcd",
		"remote": remote, "session_id": session, "success": false, "policy_reject": false, "tls": false,
	})
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := dovecotPost(c, addr, "report", body)
	if err != nil {
		t.Fatalf("dovecot report to %s: %v", addr, err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var rep struct {
		Status *int `json:"status"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(got, &rep) != nil || rep.Status == nil || *rep.Status != 0 {
		t.Fatalf("dovecot report to %s = %d %q, want 200 {\"status\":0,...}", addr, resp.StatusCode, got)
	}
}

// dovecotAllow sends a before-auth allow for a login from remote and
// returns the reply's status.
func dovecotAllow(t *testing.T, addr, remote, session string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"device_id": "", "login": "u@example.org", "protocol": "imap", "pwhash": "abcd",
		"remote": remote, "session_id": session, "tls": false,
	})
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := dovecotPost(c, addr, "allow", body)
	if err != nil {
		t.Fatalf("dovecot allow to %s: %v", addr, err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var rep struct {
		Status *int `json:"status"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(got, &rep) != nil || rep.Status == nil {
		t.Fatalf("dovecot allow to %s = %d %q, want 200 {\"status\":N,...}", addr, resp.StatusCode, got)
	}
	return *rep.Status
}

func healthz(t *testing.T, addr string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// waitHealthz polls /healthz until it answers code, within the bound.
func waitHealthz(t *testing.T, addr string, code int, within time.Duration) (int, string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, body := healthz(t, addr)
		if got == code {
			return got, body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz = %d %q after %v, want %d", got, body, within, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metricSum returns the sum of the samples of the Prometheus metric name
// whose labels contain labels ("" for all).
func metricSum(t *testing.T, addr, name, labels string) float64 {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || rest[0] != '{' && rest[0] != ' ' || !strings.Contains(rest, labels) {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	return sum
}

// policyLoad keeps workers persistent connections busy with policy requests,
// paced and bounded, recording every answer.
type policyLoad struct {
	stopc    chan struct{}
	wg       sync.WaitGroup
	answered atomic.Int64
	conns    []*policyConn

	mu    sync.Mutex
	all   []loadSample
	first error
}

type loadSample struct {
	sent   time.Time
	lat    time.Duration
	action string
}

const (
	loadPace        = 5 * time.Millisecond // between the requests of one connection
	loadMaxRequests = 20000                // per connection
	loadMaxTime     = 2 * time.Minute
)

// loadClient is the client address of load connection i.
func loadClient(i int) string { return fmt.Sprintf("198.51.100.%d", i+1) }

func startPolicyLoad(t *testing.T, addr string, workers int) *policyLoad {
	t.Helper()
	l := &policyLoad{stopc: make(chan struct{})}
	for range workers {
		l.conns = append(l.conns, dialPolicy(t, addr))
	}
	deadline := time.Now().Add(loadMaxTime)
	for i, p := range l.conns {
		client := loadClient(i)
		l.wg.Go(func() {
			var mine []loadSample
			defer func() {
				l.mu.Lock()
				l.all = append(l.all, mine...)
				l.mu.Unlock()
			}()
			for n := 0; n < loadMaxRequests && time.Now().Before(deadline); n++ {
				select {
				case <-l.stopc:
					return
				default:
				}
				sent := time.Now()
				action, err := p.ask(client)
				if err != nil {
					l.mu.Lock()
					if l.first == nil {
						l.first = fmt.Errorf("load connection %d, request %d sent %v: %w", i, n, sent.Format("15:04:05.000"), err)
					}
					l.mu.Unlock()
					return
				}
				mine = append(mine, loadSample{sent: sent, lat: time.Since(sent), action: action})
				l.answered.Add(1)
				time.Sleep(loadPace)
			}
		})
	}
	t.Cleanup(l.halt)
	return l
}

// waitAnswers waits until n more requests have been answered.
func (l *policyLoad) waitAnswers(t *testing.T, n int, within time.Duration) {
	t.Helper()
	want := l.answered.Load() + int64(n)
	deadline := time.Now().Add(within)
	for l.answered.Load() < want {
		if time.Now().After(deadline) {
			l.halt()
			t.Fatalf("load got %d answers, want %d within %v (first error: %v)", l.answered.Load(), want, within, l.err())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *policyLoad) halt() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

// stop ends the load, fails t if a request went unanswered, and returns the
// connections for reuse.
func (l *policyLoad) stop(t *testing.T) []*policyConn {
	t.Helper()
	l.halt()
	if err := l.err(); err != nil {
		t.Fatalf("a load request got no answer: %v", err)
	}
	return l.conns
}

func (l *policyLoad) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

// samples is valid after stop.
func (l *policyLoad) samples() []loadSample {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all
}

package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/netnstest"
	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

// fakeFirewall holds entries in memory and reports every call.
type fakeFirewall struct {
	mu       sync.Mutex
	held     map[string]firewall.Entry // by prefix|ports
	failSync int                       // the next failSync Syncs fail
	calls    chan string
}

func newFakeFirewall() *fakeFirewall {
	return &fakeFirewall{held: map[string]firewall.Entry{}, calls: make(chan string, 100)}
}

func fwKey(e firewall.Entry) string { return fmt.Sprint(e.Prefix, e.Ports) }

func (f *fakeFirewall) Add(_ context.Context, es []firewall.Entry) error {
	f.mu.Lock()
	for _, e := range es {
		f.held[fwKey(e)] = e
	}
	f.mu.Unlock()
	f.calls <- "add"
	return nil
}

func (f *fakeFirewall) Remove(_ context.Context, es []firewall.Entry) error {
	f.mu.Lock()
	for _, e := range es {
		delete(f.held, fwKey(e))
	}
	f.mu.Unlock()
	f.calls <- "remove"
	return nil
}

func (f *fakeFirewall) Sync(_ context.Context, es []firewall.Entry) error {
	f.mu.Lock()
	if f.failSync > 0 {
		f.failSync--
		f.mu.Unlock()
		f.calls <- "sync failed"
		return errors.New("kernel says no")
	}
	clear(f.held)
	for _, e := range es {
		f.held[fwKey(e)] = e
	}
	f.mu.Unlock()
	f.calls <- "sync"
	return nil
}

// state returns the held entries as sorted "prefix [ports]" strings.
func (f *fakeFirewall) state() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.held {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// wait returns the next call, or fails after a few seconds.
func (f *fakeFirewall) wait(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-f.calls:
		if got != want {
			t.Fatalf("firewall call %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no firewall call, want %q", want)
	}
}

type countMetrics struct {
	mu      sync.Mutex
	errs    map[string]int
	entries int
}

func (m *countMetrics) FirewallError(op string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.errs[op]++
}

func (m *countMetrics) FirewallEntries(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = n
}

func (m *countMetrics) synced() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.entries
}

// eventually polls cond for a few seconds: metrics are counted just after
// the firewall call the test waited for.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 500 {
			t.Fatalf("%s: never", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (m *countMetrics) errors(op string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.errs[op]
}

// watchedStore tells the test when its Watch has seen an event, so that the
// test knows events reach the Enforcer; failWatch makes Watch fail first.
type watchedStore struct {
	store.Store
	seen      chan struct{}
	once      sync.Once
	failWatch error
}

func (s *watchedStore) Watch(ctx context.Context, fn func(store.Event)) error {
	if err := s.failWatch; err != nil {
		s.failWatch = nil
		return err
	}
	return s.Store.Watch(ctx, func(ev store.Event) {
		s.once.Do(func() { close(s.seen) })
		fn(ev)
	})
}

var (
	dovecotPorts = []uint16{110, 143, 465, 587, 993, 995}
	postfixPorts = []uint16{25, 465, 587}
)

type enforceEnv struct {
	g       *guard.Guard
	st      *watchedStore
	fw      *fakeFirewall
	metrics *countMetrics
	tick    chan time.Time
	done    chan error
	cancel  context.CancelFunc
}

func startEnforcer(t *testing.T, prepare func(ctx context.Context, st store.Store), failWatch error, failSync int) *enforceEnv {
	t.Helper()
	ms, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatalf("memstore: %v", err)
	}
	t.Cleanup(func() { ms.Close() })
	st := &watchedStore{Store: ms, seen: make(chan struct{}), failWatch: failWatch}
	g, err := guard.New(st, guard.Config{
		Jails: []guard.Jail{
			{Name: "dovecot", Events: []string{guard.EventAuthFailure}, Key: guard.KeyPrefix, MaxRetry: 5, FindTime: 10 * time.Minute,
				BanTime: time.Hour, Action: guard.ActionFirewall, Ports: dovecotPorts},
			{Name: "postfix", Events: []string{guard.EventAbuse}, Key: guard.KeyPrefix, MaxRetry: 5, FindTime: 10 * time.Minute,
				BanTime: time.Hour, Action: guard.ActionFirewall, Ports: postfixPorts},
			{Name: "dovecot-user", Events: []string{guard.EventAuthFailure}, Key: guard.KeyUser, MaxRetry: 20, FindTime: time.Hour,
				BanTime: time.Hour, Action: guard.ActionRefuse},
		},
		Ignore: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/24")},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if prepare != nil {
		prepare(ctx, st)
	}
	fw := newFakeFirewall()
	fw.failSync = failSync
	env := &enforceEnv{g: g, st: st, fw: fw, metrics: &countMetrics{errs: map[string]int{}},
		tick: make(chan time.Time), done: make(chan error, 1), cancel: cancel}
	e := &Enforcer{Guard: g, Store: st, Firewall: fw, Metrics: env.metrics, tick: env.tick,
		Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
	go func() { env.done <- e.Run(ctx) }()
	return env
}

// watching waits until the Enforcer's Watch delivers events, by banning a
// user (which never reaches the firewall) until one arrives.
func (env *enforceEnv) watching(t *testing.T) {
	t.Helper()
	for i := 0; ; i++ {
		if _, err := env.g.Ban(context.Background(), "probe@example.org", "dovecot-user", time.Minute); err != nil {
			t.Fatal(err)
		}
		select {
		case <-env.st.seen:
			return
		case <-time.After(10 * time.Millisecond):
		}
		if i > 500 {
			t.Fatal("the enforcer never watched the store")
		}
	}
}

func (env *enforceEnv) stop(t *testing.T) {
	t.Helper()
	env.cancel()
	select {
	case err := <-env.done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func ban(t *testing.T, st store.Store, jail, subject string) {
	t.Helper()
	if _, err := st.Ban(context.Background(), store.Ban{Jail: jail, Subject: subject, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatalf("ban %s %s: %v", jail, subject, err)
	}
}

func TestEnforcerStartSync(t *testing.T) {
	env := startEnforcer(t, func(ctx context.Context, st store.Store) {
		ban(t, st, "dovecot", "net:198.51.100.7/32")
		ban(t, st, "postfix", "net:2001:db8:1::/64")
		ban(t, st, guard.ManualJail, "net:203.0.113.9/32")
		ban(t, st, "dovecot-user", "user:alice@example.org") // user-keyed: never the firewall
		ban(t, st, "dovecot", "net:192.0.2.5/32")            // inside ignoreip
		ban(t, st, "dovecot", "net:192.0.0.0/16")            // overlaps ignoreip
		ban(t, st, "retired", "net:198.51.100.8/32")         // a jail this node does not have
	}, nil, 0)
	env.fw.wait(t, "sync")
	got := env.fw.state()
	want := []string{
		fmt.Sprint(netip.MustParsePrefix("198.51.100.7/32"), dovecotPorts),
		fmt.Sprint(netip.MustParsePrefix("2001:db8:1::/64"), postfixPorts),
		fmt.Sprint(netip.MustParsePrefix("203.0.113.9/32"), []uint16{25, 110, 143, 465, 587, 993, 995}),
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("firewall after start = %q, want %q", got, want)
	}
	eventually(t, "FirewallEntries(3)", func() bool { return env.metrics.synced() == 3 })
	env.stop(t)
}

func TestEnforcerEvents(t *testing.T) {
	env := startEnforcer(t, nil, nil, 0)
	env.fw.wait(t, "sync")
	env.watching(t)
	ctx := context.Background()
	if _, err := env.g.Ban(ctx, "198.51.100.20", "dovecot", 0); err != nil {
		t.Fatal(err)
	}
	env.fw.wait(t, "add")
	want := fmt.Sprint(netip.MustParsePrefix("198.51.100.20/32"), dovecotPorts)
	if got := env.fw.state(); !slices.Equal(got, []string{want}) {
		t.Errorf("after ban: firewall = %q, want [%s]", got, want)
	}
	if _, err := env.g.Unban(ctx, "198.51.100.20"); err != nil {
		t.Fatal(err)
	}
	env.fw.wait(t, "remove")
	if got := env.fw.state(); len(got) != 0 {
		t.Errorf("after unban: firewall = %q, want empty", got)
	}

	// Someone empties the firewall: the next reconcile restores it.
	if _, err := env.g.Ban(ctx, "2001:db8:5::1", "", 0); err != nil {
		t.Fatal(err)
	}
	env.fw.wait(t, "add")
	env.fw.mu.Lock()
	clear(env.fw.held)
	env.fw.mu.Unlock()
	env.tick <- time.Now()
	env.fw.wait(t, "sync")
	want = fmt.Sprint(netip.MustParsePrefix("2001:db8:5::1/128"), []uint16{25, 110, 143, 465, 587, 993, 995})
	if got := env.fw.state(); !slices.Equal(got, []string{want}) {
		t.Errorf("after reconcile: firewall = %q, want [%s]", got, want)
	}
	env.stop(t)
}

func TestEnforcerRetries(t *testing.T) {
	env := startEnforcer(t, func(ctx context.Context, st store.Store) {
		ban(t, st, "dovecot", "net:198.51.100.7/32")
	}, errors.New("stream broken"), 1)
	env.fw.wait(t, "sync failed")
	eventually(t, "one sync error counted", func() bool { return env.metrics.errors("sync") == 1 })
	// The failed Watch is restarted (after a backoff) and asks for a sync;
	// the reconcile tick does too. Either way the firewall converges.
	env.tick <- time.Now()
	env.fw.wait(t, "sync")
	if got := env.fw.state(); len(got) != 1 {
		t.Errorf("after retry: firewall = %q, want the one ban", got)
	}
	eventually(t, "one watch error counted", func() bool { return env.metrics.errors("watch") == 1 })
	env.stop(t)
}

func TestEnforcerStoreClosed(t *testing.T) {
	env := startEnforcer(t, nil, fmt.Errorf("redis: %w", store.ErrClosed), 0)
	select {
	case err := <-env.done:
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("Run = %v, want store.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return when the store closed")
	}
}

func TestEnforcerQueueOverflow(t *testing.T) {
	q := &queue{ready: make(chan struct{}, 1)}
	for i := range maxQueued + 1 {
		q.push(store.Event{Kind: store.Banned, Ban: store.Ban{Subject: fmt.Sprintf("net:10.0.%d.%d/32", i/256, i%256)}})
	}
	evs, resync, err := q.take()
	if len(evs) != 0 || !resync || err != nil {
		t.Errorf("after %d events: take = %d events, resync %v, err %v; want 0, true, nil", maxQueued+1, len(evs), resync, err)
	}
	q.push(store.Event{Kind: store.Unbanned})
	if evs, resync, _ := q.take(); len(evs) != 1 || resync {
		t.Errorf("after a sync: take = %d events, resync %v; want 1, false", len(evs), resync)
	}
}

func TestEnforcerNeedsParts(t *testing.T) {
	if err := (&Enforcer{}).Run(context.Background()); err == nil {
		t.Errorf("Run without parts = %v, want an error", err)
	}
}

// nsFirewall runs every call of a real backend on a thread inside a test's
// network namespace: a backend acts on the namespace of its calling thread,
// and the Enforcer calls it from its own goroutine.
type nsFirewall struct {
	fw firewall.Backend
	th *netnstest.Thread
}

func (n nsFirewall) Add(ctx context.Context, es []firewall.Entry) (err error) {
	n.th.Do(func() { err = n.fw.Add(ctx, es) })
	return err
}

func (n nsFirewall) Remove(ctx context.Context, es []firewall.Entry) (err error) {
	n.th.Do(func() { err = n.fw.Remove(ctx, es) })
	return err
}

func (n nsFirewall) Sync(ctx context.Context, es []firewall.Entry) (err error) {
	n.th.Do(func() { err = n.fw.Sync(ctx, es) })
	return err
}

// TestEnforcerNFTables runs the Enforcer against the real nftables backend,
// in a network namespace of its own.
func TestEnforcerNFTables(t *testing.T) {
	testenv.Root(t)
	ip := testenv.Command(t, "ip")
	ns := fmt.Sprintf("mgtest-enf-%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command(ip, "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(ip, "netns", "del", ns).Run() })
	th := netnstest.Enter(t, ns)
	opts := firewall.Options{Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var nft *firewall.NFTables
	var err error
	th.Do(func() { nft, err = firewall.NewNFTables(ctx, opts) })
	if err != nil {
		t.Fatal(err)
	}
	defer nft.Close()
	fw := nsFirewall{fw: nft, th: th}

	ms, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	ban(t, ms, "dovecot", "net:198.51.100.7/32")
	g, err := guard.New(ms, guard.Config{Jails: []guard.Jail{{Name: "dovecot", Events: []string{guard.EventAuthFailure}, Key: guard.KeyPrefix,
		MaxRetry: 5, FindTime: time.Minute, BanTime: time.Hour, Action: guard.ActionFirewall, Ports: dovecotPorts}}})
	if err != nil {
		t.Fatal(err)
	}
	st := &watchedStore{Store: ms, seen: make(chan struct{})}
	done := make(chan error, 1)
	runCtx, stop := context.WithCancel(ctx)
	go func() { done <- (&Enforcer{Guard: g, Store: st, Firewall: fw, Log: opts.Log}).Run(runCtx) }()
	defer func() { stop(); <-done }()

	held := func() []string {
		var es []firewall.Entry
		var err error
		th.Do(func() { es, err = firewall.List(ctx, firewall.NameNFTables, opts) })
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Prefix.String())
		}
		return out
	}
	eventually(t, "the store's ban in the kernel", func() bool { return slices.Equal(held(), []string{"198.51.100.7/32"}) })
	// Wait until events flow: ban a user (never the firewall) until one arrives.
	for i := 0; ; i++ {
		ban(t, ms, "dovecot-user", "user:probe@example.org")
		select {
		case <-st.seen:
		case <-time.After(10 * time.Millisecond):
			if i < 500 {
				continue
			}
			t.Fatal("the enforcer never watched the store")
		}
		break
	}
	if _, err := g.Ban(ctx, "2001:db8:7::1/64", "dovecot", 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new ban in the kernel", func() bool {
		return slices.Equal(held(), []string{"198.51.100.7/32", "2001:db8:7::/64"})
	})
	if _, err := g.Unban(ctx, "198.51.100.7"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "an unban out of the kernel", func() bool { return slices.Equal(held(), []string{"2001:db8:7::/64"}) })
}

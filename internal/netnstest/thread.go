package netnstest

import (
	"context"
	"net"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Thread runs functions on one OS thread that has entered a network
// namespace: a socket belongs to the namespace of the thread that creates it.
// The thread is never handed back to the Go scheduler; when the test ends
// its goroutine exits while locked and the runtime destroys the thread.
//
// Do and DialContext may be called from any goroutine of the test, until the
// test's cleanup runs.
type Thread struct {
	work chan func()
	done chan struct{}
}

// Enter starts a thread in the namespace called name (under /run/netns) and
// ends it when t's cleanup runs.
func Enter(t testing.TB, name string) *Thread {
	t.Helper()
	f, err := os.Open(Path(name))
	if err != nil {
		t.Fatal(err)
	}
	th := &Thread{work: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		defer close(th.done)
		err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		errc <- err
		if err != nil {
			return
		}
		for fn := range th.work {
			fn()
		}
	}()
	if err := <-errc; err != nil {
		<-th.done
		t.Fatalf("setns %s: %v", name, err)
	}
	t.Cleanup(func() { close(th.work); <-th.done })
	return th
}

// Do runs fn on the thread and waits for it.
func (th *Thread) Do(fn func()) {
	ran := make(chan struct{})
	th.work <- func() { defer close(ran); fn() }
	<-ran
}

// DialContext opens a connection with d from inside the namespace.
func (th *Thread) DialContext(ctx context.Context, d *net.Dialer, network, addr string) (c net.Conn, err error) {
	th.Do(func() { c, err = d.DialContext(ctx, network, addr) })
	return c, err
}

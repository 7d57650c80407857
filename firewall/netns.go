package firewall

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// nsThread runs functions on one OS thread that has entered a network
// namespace. The iptables and ipset programs act on the namespace of the
// process that runs them, and a child inherits the namespace of the thread
// that forks it: running every command from this thread puts them all in the
// namespace, whichever goroutine asked. The thread is never returned to the
// Go scheduler: when the loop ends, the goroutine exits while locked and the
// runtime destroys the thread.
//
// A nil *nsThread runs functions on the caller's goroutine (the process's own
// namespace).
type nsThread struct {
	work chan func()
	done chan struct{}
}

// startNS starts a thread in the namespace at path; "" returns nil.
func startNS(path string) (*nsThread, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("network namespace: %w", err)
	}
	t := &nsThread{work: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		defer close(t.done)
		err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		errc <- err
		if err != nil {
			return
		}
		for fn := range t.work {
			fn()
		}
	}()
	if err := <-errc; err != nil {
		<-t.done
		return nil, fmt.Errorf("network namespace %s: setns: %w", path, err)
	}
	return t, nil
}

// do runs fn on the thread and waits for it.
func (t *nsThread) do(fn func()) {
	if t == nil {
		fn()
		return
	}
	ran := make(chan struct{})
	t.work <- func() { defer close(ran); fn() }
	<-ran
}

// stop ends the thread. It must be called once, after the last do.
func (t *nsThread) stop() {
	if t == nil {
		return
	}
	close(t.work)
	<-t.done
}

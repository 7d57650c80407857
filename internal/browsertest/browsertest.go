// Package browsertest drives Debian's headless chromium from a test through
// the DevTools protocol (github.com/chromedp/chromedp). It skips without
// chromium, and fails when CI=true (internal/testenv).
package browsertest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/mailguard/mailguard/internal/testenv"
)

// New starts a headless chromium for t, which ends with the test, and
// returns a context driving one tab. The tab accepts the self-signed
// certificates of nginxtest. With noScript the page runs no JavaScript
// (the DevTools protocol still evaluates expressions).
func New(t *testing.T, noScript bool) context.Context {
	t.Helper()
	exe := testenv.Command(t, "chromium")
	testenv.Long(t, "starts a browser")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // root in a container has no user namespace sandbox
		chromedp.DisableGPU,
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(800, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTime := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() {
		cancelTime()
		cancelTab()
		cancelAlloc() // waits for the browser to exit
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("chromium does not start: %v", err)
	}
	if noScript {
		_, err := chromedp.Call(ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
		if err != nil {
			t.Fatalf("chromium: turning JavaScript off: %v", err)
		}
	}
	return ctx
}

// Do runs steps with a deadline; on failure it fails t with what the page
// shows.
func Do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, Page(ctx))
	}
}

// Get runs one action that returns a value, or fails t.
func Get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatalf("%s: %v\n%s", what, err, Page(ctx))
	}
	return v
}

// Page returns the address and text of the page, for failure messages.
func Page(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	txt, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.location.href + "\n" + document.body.innerText`))
	if err != nil {
		return "(page unreadable: " + err.Error() + ")"
	}
	return txt
}

// Screenshot saves the whole page as a PNG artifact (see ArtifactDir) and
// returns its path.
func Screenshot(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	png := Get(t, ctx, "screenshot", chromedp.FullScreenshot(100))
	path := filepath.Join(ArtifactDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	return path
}

// ArtifactDir is where a test's files for people go: $MAILGUARD_TEST_ARTIFACTS
// when set (kept after the run), else the test's temporary directory (gone
// after it). Never the repository.
func ArtifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MAILGUARD_TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Package nginxtest runs a private nginx for a test: TLS on a free loopback
// port with a throw-away self-signed certificate, serving the location
// blocks the test gives (as contrib/nginx ships them), its logs and temp
// files in the test's directory. It skips without nginx, and fails when
// CI=true (internal/testenv).
package nginxtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testcert"
	"github.com/mailguard/mailguard/internal/testenv"
)

// Start runs nginx with locations inside a `server { listen ... ssl; }`
// block and returns its base URL (https://127.0.0.1:PORT). nginx stops
// when the test ends; its error log is printed if the test failed.
func Start(t *testing.T, locations string) string {
	t.Helper()
	exe := testenv.Command(t, "nginx")
	dir := t.TempDir()
	cert, key := testcert.Write(t, dir)
	port := testenv.FreePort(t)
	user := ""
	if os.Geteuid() == 0 {
		user = "user root root;" // the workers read the test's directory
	}
	conf := fmt.Sprintf(`%s
worker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log info;
events { worker_connections 64; }
http {
    access_log %[2]s/access.log;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    server {
        listen 127.0.0.1:%[3]d ssl;
        server_name localhost;
        ssl_certificate %[4]s;
        ssl_certificate_key %[5]s;
%[6]s
    }
}
`, user, dir, port, cert, key, locations)
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(exe, "-t", "-p", dir, "-c", confFile).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s\n%s", err, out, conf)
	}
	cmd := exec.Command(exe, "-p", dir, "-c", confFile, "-g", "daemon off;")
	if err := cmd.Start(); err != nil {
		t.Fatalf("nginx: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt) // fast shutdown
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", b)
		}
	})
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			conn.Close()
			break
		}
		select {
		case err := <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not listen on %d: %v", port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return url
}

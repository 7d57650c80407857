package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// Webmail is Debian's Roundcube (roundcube-core, roundcube-sqlite3) served by
// Debian's nginx and php-fpm, all three private to the test: Roundcube's
// root is a temp dir laid out as Debian's /var/lib/roundcube (its code,
// SQL and skin linked from /usr/share/roundcube), with its own config,
// sqlite database, logs and plugins (contrib/roundcube/mailguard_client_ip
// copied in as shipped); nginx and php-fpm run from config files in the
// same dir, on loopback ports, and are stopped at the test's end. Nothing
// of the system's Roundcube, nginx or php-fpm setup is read or changed
// (but Debian's fastcgi_params, mime.types and php.ini, read as shipped).
type Webmail struct {
	URL  string // http://127.0.0.1:PORT/
	Addr string // nginx's 127.0.0.1:PORT
	dir  string
}

// WebmailOptions change the instance.
type WebmailOptions struct {
	// Plugins are Roundcube plugins from contrib/roundcube, copied in and
	// switched on.
	Plugins []string
	// Server is put into nginx's server block before its locations
	// (contrib/nginx's snippet goes there).
	Server string
}

// StartWebmail runs Roundcube against the IMAP server at imap (host:port;
// plain IMAP, which stock Dovecot allows from its own address).
func StartWebmail(t *testing.T, imap string, opt WebmailOptions) *Webmail {
	t.Helper()
	testenv.Root(t)
	nginx := testenv.Command(t, "nginx")
	fpms, _ := filepath.Glob("/usr/sbin/php-fpm*")
	if len(fpms) == 0 {
		testenv.Missing(t, "php-fpm is not installed (make test installs it as root)")
	}
	const share = "/usr/share/roundcube"
	for _, f := range []string{share + "/index.php", share + "/SQL/sqlite.initial.sql", "/etc/roundcube/defaults.inc.php"} {
		if _, err := os.Stat(f); err != nil {
			testenv.Missing(t, "roundcube-core and roundcube-sqlite3 are not installed (make test installs them as root): "+err.Error())
		}
	}

	dir, err := os.MkdirTemp("/tmp", "mgwebmail")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // nginx and php-fpm workers run as www-data
	root := filepath.Join(dir, "roundcube")
	w := &Webmail{Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), dir: dir}
	w.URL = "http://" + w.Addr + "/"
	fpmAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))

	// Debian's layout of /var/lib/roundcube: public_html/index.php sets
	// INSTALL_PATH to its parent, where program/, SQL/, config/, plugins/,
	// skins/, temp/ and logs/ are looked up.
	for _, d := range []string{"config", "plugins", "skins", "public_html/program", "temp", "logs", "db", "../nginx-temp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"index.php":                      share + "/index.php",
		"program":                        share + "/program",
		"SQL":                            share + "/SQL",
		"config/defaults.inc.php":        "/etc/roundcube/defaults.inc.php",
		"config/mimetypes.php":           "/etc/roundcube/mimetypes.php",
		"skins/elastic":                  share + "/skins/elastic",
		"plugins/jqueryui":               share + "/plugins/jqueryui",
		"plugins/filesystem_attachments": share + "/plugins/filesystem_attachments",
		"public_html/plugins":            "../plugins",
		"public_html/skins":              "../skins",
		"public_html/program/js":         "../../program/js",
		"public_html/program/resources":  "../../program/resources",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(root, "public_html", "index.php"),
		"<?php\n// As Debian's /var/lib/roundcube/public_html/index.php.\ndefine('INSTALL_PATH', realpath(__DIR__ . '/..') . '/');\ninclude INSTALL_PATH . 'index.php';\n")
	for _, p := range opt.Plugins {
		src := filepath.Join("..", "contrib", "roundcube", p)
		if out, err := exec.Command("cp", "-r", src, filepath.Join(root, "plugins", p)).CombinedOutput(); err != nil {
			t.Fatalf("copying contrib/roundcube/%s: %v\n%s", p, err, out)
		}
	}
	wwwData, err := user.Lookup("www-data") // Debian's nginx and php-fpm user
	if err != nil {
		testenv.Missing(t, "no www-data user: "+err.Error())
	}
	uid, _ := strconv.Atoi(wwwData.Uid)
	gid, _ := strconv.Atoi(wwwData.Gid)
	for _, d := range []string{"temp", "logs", "db"} {
		if err := os.Chown(filepath.Join(root, d), uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	key := make([]byte, 12)
	rand.Read(key)
	plugins := ""
	for _, p := range opt.Plugins {
		plugins += "'" + p + "', "
	}
	writeFile(t, filepath.Join(root, "config", "config.inc.php"), fmt.Sprintf(`<?php
$config = [];
$config['db_dsnw'] = 'sqlite:///%[1]s/db/roundcube.sqlite?mode=0640';
$config['imap_host'] = '%[2]s';
$config['smtp_host'] = '';
$config['des_key'] = '%[3]s';
$config['plugins'] = [%[4]s];
$config['skin'] = 'elastic';
$config['log_driver'] = 'file';
$config['log_dir'] = '%[1]s/logs/';
$config['temp_dir'] = '%[1]s/temp/';
$config['enable_spellcheck'] = false;
`, root, imap, hex.EncodeToString(key), plugins))

	fpmConf := filepath.Join(dir, "php-fpm.conf")
	writeFile(t, fpmConf, fmt.Sprintf(`[global]
pid = %[1]s/php-fpm.pid
error_log = %[1]s/php-fpm.log
daemonize = no

[roundcube]
user = www-data
group = www-data
listen = %[2]s
listen.allowed_clients = 127.0.0.1
pm = static
pm.max_children = 4
catch_workers_output = yes
php_admin_value[error_log] = %[1]s/php-errors.log
php_admin_flag[log_errors] = on
`, dir, fpmAddr))

	ngConf := filepath.Join(dir, "nginx.conf")
	writeFile(t, ngConf, fmt.Sprintf(`user www-data;
worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log info;
events {
  worker_connections 256;
}
http {
  include /etc/nginx/mime.types;
  access_log %[1]s/nginx-access.log;
  client_body_temp_path %[1]s/nginx-temp/body;
  fastcgi_temp_path %[1]s/nginx-temp/fastcgi;
  proxy_temp_path %[1]s/nginx-temp/proxy;
  scgi_temp_path %[1]s/nginx-temp/scgi;
  uwsgi_temp_path %[1]s/nginx-temp/uwsgi;
  server {
    listen %[2]s;
    server_name webmail.example.org;
    root %[1]s/roundcube/public_html;
    index index.php;
%[4]s
    location = /index.php {
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
      fastcgi_pass %[3]s;
    }
    location / {
      try_files $uri /index.php$is_args$args;
    }
  }
}
`, dir, w.Addr, fpmAddr, opt.Server))

	fpm := exec.Command(fpms[0], "--nodaemonize", "--fpm-config", fpmConf)
	startServer(t, "php-fpm", fpm, fpmAddr, filepath.Join(dir, "php-fpm.log"), filepath.Join(dir, "php-errors.log"))
	ng := exec.Command(nginx, "-e", filepath.Join(dir, "nginx-error.log"), "-p", dir, "-c", ngConf)
	startServer(t, "nginx", ng, w.Addr, filepath.Join(dir, "nginx-error.log"))
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"logs/errors.log", "logs/imap.log"} {
				if b, err := os.ReadFile(filepath.Join(root, f)); err == nil {
					t.Logf("roundcube %s:\n%s", f, b)
				}
			}
		}
	})
	return w
}

// startServer starts cmd (a server that stays in the foreground), waits
// until addr accepts connections, and stops it (SIGQUIT, then SIGKILL) at
// the test's end, showing its logs if the test failed.
func startServer(t *testing.T, name string, cmd *exec.Cmd, addr string, logs ...string) {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
			for _, f := range logs {
				if b, err := os.ReadFile(f); err == nil {
					t.Logf("%s:\n%s", f, b)
				}
			}
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			t.Fatalf("%s exited at start: %v\n%s", name, cmd.ProcessState, out.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not listen on %s in 20s\n%s", name, addr, out.String())
}

// Browser is one browser on a loopback source address, with its own
// cookies; it does not follow redirects (a login's 302 is its answer).
type Browser struct {
	c   *http.Client
	url string
}

// NewBrowser returns a browser talking to w from the address src.
func (w *Webmail) NewBrowser(t *testing.T, src string) *Browser {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &Browser{url: w.URL, c: &http.Client{
		Jar: jar, Transport: tr, Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// Get fetches path (relative to the webmail's root) and returns the status
// and body.
func (b *Browser) Get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := b.c.Get(b.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return resp.StatusCode, string(body)
}

var tokenRE = regexp.MustCompile(`<input type="hidden" name="_token" value="([^"]+)"`)

// Post posts the form-encoded body to path and returns the status,
// Location and body.
func (b *Browser) Post(t *testing.T, path, form string) (status int, location, body string) {
	t.Helper()
	resp, err := b.c.Post(b.url+path, "application/x-www-form-urlencoded", strings.NewReader(form))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		t.Fatalf("POST %s: reading the body: %v", path, err)
	}
	return resp.StatusCode, resp.Header.Get("Location"), string(rb)
}

// Login fetches Roundcube's login form (its session cookie and CSRF token
// _token), posts user and pass as the form does, and returns the answer's
// status and Location (a 302 to the mailbox is a successful login) and
// body. If the form itself is refused, that status and body are returned.
func (b *Browser) Login(t *testing.T, user, pass string) (status int, location, body string) {
	t.Helper()
	status, form := b.Get(t, "")
	if status != http.StatusOK {
		return status, "", form
	}
	m := tokenRE.FindStringSubmatch(form)
	if m == nil {
		t.Fatalf("Roundcube's login page has no _token:\n%s", form)
	}
	v := url.Values{
		"_token": {m[1]}, "_task": {"login"}, "_action": {"login"},
		"_timezone": {"UTC"}, "_url": {""}, "_user": {user}, "_pass": {pass},
	}
	return b.Post(t, "?_task=login", v.Encode())
}

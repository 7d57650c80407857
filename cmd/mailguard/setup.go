package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/contrib"
	"github.com/mailguard/mailguard/internal/config"
)

// setupFlags are the options of `mailguard setup postfix|dovecot`.
type setupFlags struct {
	write       bool
	showSecrets bool
	postfixDir  string
	dovecotConf string
}

func setupCmd(g *globals) *cobra.Command {
	var f setupFlags
	cmd := &cobra.Command{
		Use:   "setup postfix|dovecot",
		Short: "print (or --write) the Postfix or Dovecot lines that make it ask mailguard",
		Long: `setup reads this host's running Postfix or Dovecot configuration and mailguard's
own, and prints the exact lines to add: for Postfix the check_policy_service
restriction in main.cf and in every master.cf service that overrides its
restrictions (Debian's submission and smtps); for Dovecot the conf.d file of
contrib/ for the installed version, with the API header and the hash nonce
filled in (masked in the printout unless --show-secrets). --write installs
them, with a backup of every file it changes, and says which reload to run.`,
		Args:      usageArgs(1),
		ValidArgs: []string{"postfix", "dovecot"},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.load()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch args[0] {
			case "postfix":
				return setupPostfix(cmd.Context(), out, c, f)
			case "dovecot":
				return setupDovecot(cmd.Context(), out, c, f)
			}
			return &exitError{exitUsage, fmt.Errorf("setup %q: want postfix or dovecot", args[0])}
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.write, "write", false, "install the lines (a backup of each changed file is kept beside it)")
	fl.BoolVar(&f.showSecrets, "show-secrets", false, "print the Dovecot API header and hash nonce instead of masking them")
	fl.StringVar(&f.postfixDir, "postfix-config", defaultPostfixDir, "Postfix config_directory (postconf -c DIR)")
	fl.StringVar(&f.dovecotConf, "dovecot-config", defaultDovecotConf, "Dovecot's main config file (doveconf -c FILE)")
	return cmd
}

// ---- Postfix ----

// postfixChange is one parameter setup sets: in main.cf when Service is
// nil, else as a -o override of that master.cf service.
type postfixChange struct {
	Service  *smtpdService
	Param    string
	Old, New string
}

func (ch postfixChange) where() string {
	if ch.Service == nil {
		return "main.cf"
	}
	return "master.cf service " + ch.Service.key()
}

// singleRef matches a list that is only a reference to another parameter,
// as Debian's master.cf suggests (-o smtpd_recipient_restrictions=$mua_recipient_restrictions).
var singleRef = regexp.MustCompile(`^\$(?:\{([a-z0-9_]+)\}|\(([a-z0-9_]+)\)|([a-z0-9_]+))$`)

func refName(raw string) string {
	m := singleRef.FindStringSubmatch(strings.TrimSpace(raw))
	if m == nil {
		return ""
	}
	return m[1] + m[2] + m[3]
}

// policyUses finds mailguard's policy service in a list: the indexes of its
// elements, and of the first permit_* before the first of them.
func policyUses(list []elem, ours endpoint, queueDir string) (at []int, permitBefore string) {
	for i, e := range list {
		if e.name == "check_policy_service" {
			server, _ := policyArg(e.arg)
			if ours.matches(policyEndpoint(server, queueDir)) {
				at = append(at, i)
			}
		}
		if len(at) == 0 && permitBefore == "" && strings.HasPrefix(e.name, "permit") && !strings.HasPrefix(e.name, "permit_dnswl") && !strings.HasPrefix(e.name, "permit_rhswl") {
			permitBefore = e.name
		}
	}
	return at, permitBefore
}

// listOK reports whether an expanded list holds mailguard's service as it
// should: in the recipient list once, before any permit, with
// default_action; in any other list not at all.
func listOK(param, expanded string, ours endpoint, queueDir string) bool {
	list := parseList(expanded)
	at, permit := policyUses(list, ours, queueDir)
	if param != recipientList {
		return len(at) == 0
	}
	if len(at) != 1 || permit != "" {
		return false
	}
	_, attrs := policyArg(list[at[0]].arg)
	_, ok := policyAttr(attrs, "default_action")
	return ok
}

// fixList returns raw with mailguard's service removed and, in the
// recipient list, put first as policy.
func fixList(param, raw string, ours endpoint, queueDir string, policy elem) string {
	list := parseList(raw)
	at, _ := policyUses(list, ours, queueDir)
	var out []elem
	if param == recipientList {
		out = append(out, policy)
	}
	for i, e := range list {
		if len(at) > 0 && at[0] == i {
			at = at[1:]
			continue
		}
		out = append(out, e)
	}
	return joinList(out)
}

// planPostfix lists the parameters to change so that every smtpd service
// asks mailguard (listening on listen) once, first, at RCPT time.
func planPostfix(pc *postfixConf, refs map[string]string, listen string) ([]postfixChange, error) {
	ours, err := listenEndpoint(listen)
	if err != nil {
		return nil, fmt.Errorf("postfix.listen %w", err)
	}
	policy, err := contribPolicy(postfixServer(ours, pc.QueueDir))
	if err != nil {
		return nil, err
	}
	var changes []postfixChange
	seen := map[string]bool{}
	add := func(svc *smtpdService, param, raw, expanded string) {
		if listOK(param, expanded, ours, pc.QueueDir) {
			return
		}
		target := param
		if ref := refName(raw); ref != "" {
			if v, ok := refs[ref]; ok {
				// Fix the main.cf parameter the list names; the list
				// itself (and every other user of it) then follows.
				svc, target, raw = nil, ref, v
			}
		}
		ch := postfixChange{Service: svc, Param: target, Old: raw, New: fixList(param, raw, ours, pc.QueueDir, policy)}
		if seen[ch.where()+" "+target] || ch.New == ch.Old {
			return
		}
		seen[ch.where()+" "+target] = true
		changes = append(changes, ch)
	}
	for _, p := range restrictionLists {
		add(nil, p, pc.Main[p], pc.MainX[p])
	}
	for i := range pc.Services {
		s := &pc.Services[i]
		for _, p := range restrictionLists {
			if raw, ok := s.Over[p]; ok {
				add(s, p, raw, s.OverX[p])
			}
		}
	}
	return changes, nil
}

// readRefs reads the main.cf parameters that restriction lists name alone
// ($mua_recipient_restrictions), raw.
func readRefs(ctx context.Context, pc *postfixConf) (map[string]string, error) {
	var names []string
	add := func(v string) {
		if n := refName(v); n != "" {
			names = append(names, n)
		}
	}
	for _, v := range pc.Main {
		add(v)
	}
	for _, s := range pc.Services {
		for _, p := range restrictionLists {
			add(s.Over[p])
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	out, err := runTool(ctx, "postconf", append([]string{"-c", pc.Dir}, names...)...)
	if err != nil {
		return nil, err
	}
	return nameValues(out), nil
}

// masterLine is how a change is written in master.cf: Postfix's brace form
// when the value has spaces.
func masterLine(ch postfixChange) string {
	if strings.ContainsAny(ch.New, " \t{}") {
		return "-o { " + ch.Param + " = " + ch.New + " }"
	}
	return "-o " + ch.Param + "=" + ch.New
}

func dirFlag(name, val, def string) string {
	if val == def {
		return ""
	}
	return " " + name + " " + val
}

func setupPostfix(ctx context.Context, out io.Writer, c config.Config, f setupFlags) error {
	pc, err := readPostfix(ctx, f.postfixDir)
	if err != nil {
		return fmt.Errorf("reading Postfix's configuration: %w", err)
	}
	refs, err := readRefs(ctx, pc)
	if err != nil {
		return fmt.Errorf("reading Postfix's configuration: %w", err)
	}
	changes, err := planPostfix(pc, refs, c.Postfix.Listen)
	if err != nil {
		return err
	}
	pfx := "postfix" + dirFlag("-c", f.postfixDir, defaultPostfixDir)
	if l, _ := listenEndpoint(c.Postfix.Listen); l.network == "unix" && strings.HasPrefix(postfixServer(l, pc.QueueDir), "unix:/") {
		fmt.Fprintf(out, "# warning: postfix.listen %s is outside queue_directory %s: a chrooted smtpd (Debian's default) cannot reach it; listen under %s/private instead\n",
			c.Postfix.Listen, pc.QueueDir, pc.QueueDir)
	}
	if len(changes) == 0 {
		fmt.Fprintf(out, "Postfix (%s) already asks mailguard at %s in every smtpd service: nothing to change.\n", f.postfixDir, c.Postfix.Listen)
		return nil
	}
	if !f.write {
		fmt.Fprintf(out, "# Postfix in %s -> mailguard's postfix.listen %s\n", f.postfixDir, c.Postfix.Listen)
		for _, ch := range changes {
			if ch.Service == nil {
				fmt.Fprintf(out, "\n# %s: set\n%s = %s\n", filepath.Join(f.postfixDir, "main.cf"), ch.Param, ch.New)
				continue
			}
			fmt.Fprintf(out, "\n# %s, entry %s: replace its -o %s with\n  %s\n",
				filepath.Join(f.postfixDir, "master.cf"), ch.Service.key(), ch.Param, masterLine(ch))
		}
		fmt.Fprintf(out, "\n# then: %s check && %s reload\n# (mailguard setup postfix --write%s makes these edits, with backups)\n",
			pfx, pfx, dirFlag("--postfix-config", f.postfixDir, defaultPostfixDir))
		return nil
	}

	stamp := time.Now().UTC().Format("20060102T150405Z")
	var backups [][2]string // file, backup
	backup := func(name string) error {
		file := filepath.Join(f.postfixDir, name)
		for _, b := range backups {
			if b[0] == file {
				return nil
			}
		}
		bak := file + ".mailguard-" + stamp
		if err := copyFile(file, bak); err != nil {
			return fmt.Errorf("backup of %s: %w", file, err)
		}
		backups = append(backups, [2]string{file, bak})
		return nil
	}
	restore := func() {
		for _, b := range backups {
			copyFile(b[1], b[0])
		}
	}
	for _, ch := range changes {
		name := "main.cf"
		if ch.Service != nil {
			name = "master.cf"
		}
		if err := backup(name); err != nil {
			return err
		}
	}
	if err := applyPostfix(ctx, f.postfixDir, changes); err != nil {
		restore()
		return fmt.Errorf("%w (files restored from the backups)", err)
	}
	if _, err := runTool(ctx, "postfix", "-c", f.postfixDir, "check"); err != nil {
		restore()
		return fmt.Errorf("postfix check refused the result, files restored: %w", err)
	}
	for _, ch := range changes {
		fmt.Fprintf(out, "%s: %s = %s\n", ch.where(), ch.Param, ch.New)
	}
	for _, b := range backups {
		fmt.Fprintf(out, "backup: %s\n", b[1])
	}
	fmt.Fprintf(out, "postfix check: ok. Now run: %s reload\n", pfx)
	return nil
}

// applyPostfix writes changes with postconf: -e for main.cf, -P for a
// master.cf override without spaces, else the entry rewritten by -M with
// the override in brace form (postconf -P refuses spaces).
func applyPostfix(ctx context.Context, dir string, changes []postfixChange) error {
	for _, ch := range changes {
		var err error
		switch {
		case ch.Service == nil:
			_, err = runTool(ctx, "postconf", "-c", dir, "-e", ch.Param+" = "+ch.New)
		case !strings.ContainsAny(ch.New, " \t{}"):
			_, err = runTool(ctx, "postconf", "-c", dir, "-P", ch.Service.key()+"/"+ch.Param+"="+ch.New)
		default:
			err = rewriteEntry(ctx, dir, ch)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func rewriteEntry(ctx context.Context, dir string, ch postfixChange) error {
	key := ch.Service.key()
	if _, err := runTool(ctx, "postconf", "-c", dir, "-PX", key+"/"+ch.Param); err != nil {
		return err
	}
	entry, err := runTool(ctx, "postconf", "-c", dir, "-M", key)
	if err != nil {
		return err
	}
	entry = strings.TrimSpace(entry)
	if entry == "" || strings.Contains(entry, "\n") {
		return fmt.Errorf("postconf -M %s: want one entry, got %q", key, entry)
	}
	_, err = runTool(ctx, "postconf", "-c", dir, "-Me", key+" = "+entry+" "+masterLine(ch))
	return err
}

// ---- Dovecot ----

// setupAPIHeader is the API header Dovecot must send (dovecotAPIHeader):
// dovecot.api_header, or the daemon's generated key, made now when the
// daemon has not run yet so that setup may come first. "" under
// dovecot.insecure_no_auth.
func setupAPIHeader(c config.Config) (string, error) {
	h, err := dovecotAPIHeader(c, true)
	if err != nil {
		return "", fmt.Errorf("%w (or set dovecot.api_header)", err)
	}
	return h, nil
}

// The settings setup fills in the contrib file.
const (
	dovecotURLSetting    = "auth_policy_server_url"
	dovecotHeaderSetting = "auth_policy_server_api_header"
	dovecotNonceSetting  = "auth_policy_hash_nonce"
)

// renderDovecot fills a contrib Dovecot file: the values of the three
// settings are replaced wherever they are set; every other line is
// contrib's. A placeholder left anywhere else is an error, so a new one in
// contrib/ cannot slip through unfilled.
func renderDovecot(text []byte, values map[string]string) (string, error) {
	lines := strings.Split(string(text), "\n")
	found := map[string]bool{}
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "#") {
			continue
		}
		name, _, ok := strings.Cut(t, "=")
		name = strings.TrimSpace(name)
		if v, known := values[name]; ok && known {
			indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
			lines[i] = indent + name + " = " + v
			found[name] = true
			continue
		}
		if isPlaceholder(t) {
			return "", fmt.Errorf("contrib file line %d: a placeholder setup does not know: %s", i+1, t)
		}
	}
	for name := range values {
		if !found[name] {
			return "", fmt.Errorf("contrib file does not set %s", name)
		}
	}
	return strings.Join(lines, "\n"), nil
}

func newNonce() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// dovecotTarget is where the mailguard file goes: conf.d beside the main
// config (Debian's dovecot.conf includes conf.d/*.conf).
func dovecotTarget(file string) string {
	return filepath.Join(filepath.Dir(file), "conf.d", "95-mailguard.conf")
}

func dovecotReload(file string) string {
	if file == defaultDovecotConf {
		return "systemctl reload dovecot (or: doveadm reload)"
	}
	return "dovecot -c " + file + " reload"
}

const secretMask = "<secret: --show-secrets prints it, --write installs it>"

func setupDovecot(ctx context.Context, out io.Writer, c config.Config, f setupFlags) error {
	header, err := setupAPIHeader(c)
	if err != nil {
		return err
	}
	url, err := dovecotURL(c.Dovecot.Listen)
	if err != nil {
		return &exitError{exitUsage, err}
	}
	version, major, minor, err := dovecotVersion(ctx)
	if err != nil {
		return err
	}
	name, text, err := contrib.Dovecot(major, minor)
	if err != nil {
		return err
	}
	nonce, err := doveconf(ctx, f.dovecotConf, dovecotNonceSetting)
	if err != nil {
		return fmt.Errorf("reading Dovecot's configuration: %w", err)
	}
	kept := nonce != "" && !isPlaceholder(nonce)
	if !kept {
		if nonce, err = newNonce(); err != nil {
			return err
		}
	}
	values := map[string]string{dovecotURLSetting: url, dovecotHeaderSetting: header, dovecotNonceSetting: nonce}
	target := dovecotTarget(f.dovecotConf)
	nonceNote := "a fresh auth_policy_hash_nonce: give every other Dovecot of the site the same one"
	if kept {
		nonceNote = "auth_policy_hash_nonce kept from this host's configuration"
	}
	if !f.write {
		if !f.showSecrets {
			values[dovecotHeaderSetting], values[dovecotNonceSetting] = secretMask, secretMask
		}
		content, err := renderDovecot(text, values)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "# %s (Dovecot %s, from contrib/%s; %s)\n%s", target, version, name, nonceNote, content)
		if !strings.HasSuffix(content, "\n") {
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "# then: %s\n# (mailguard setup dovecot --write%s installs it, with a backup)\n",
			dovecotReload(f.dovecotConf), dirFlag("--dovecot-config", f.dovecotConf, defaultDovecotConf))
		return nil
	}
	content, err := renderDovecot(text, values)
	if err != nil {
		return err
	}
	old, err := os.ReadFile(target)
	switch {
	case err == nil && string(old) == content:
		fmt.Fprintf(out, "%s is up to date: nothing to change.\n", target)
		return nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return err
	}
	if _, err := os.Stat(filepath.Dir(target)); err != nil {
		return fmt.Errorf("%w: create it and make %s include it (!include conf.d/*.conf)", err, f.dovecotConf)
	}
	bak := ""
	if old != nil {
		bak = target + ".mailguard-" + time.Now().UTC().Format("20060102T150405Z")
		if err := copyFile(target, bak); err != nil {
			return fmt.Errorf("backup of %s: %w", target, err)
		}
	}
	restore := func() {
		if bak != "" {
			copyFile(bak, target)
		} else {
			os.Remove(target)
		}
	}
	if err := writeSecretFile(target, []byte(content)); err != nil {
		return err
	}
	// Dovecot must now read what we wrote: a config that does not include
	// conf.d, or a later file overriding it, would leave it dead.
	for name, want := range values {
		got, err := doveconf(ctx, f.dovecotConf, name)
		if err != nil {
			restore()
			return fmt.Errorf("doveconf refused the new file (old state restored): %w", err)
		}
		if got != want {
			restore()
			return fmt.Errorf("after writing %s, doveconf -c %s still shows another %s: does %s include conf.d/*.conf, or does a later file set it? (restored the old state)",
				target, f.dovecotConf, name, f.dovecotConf)
		}
	}
	fmt.Fprintf(out, "wrote %s (Dovecot %s, contrib/%s; %s)\n", target, version, name, nonceNote)
	if bak != "" {
		fmt.Fprintf(out, "backup: %s\n", bak)
	}
	fmt.Fprintf(out, "doveconf: ok. Now run: %s\n", dovecotReload(f.dovecotConf))
	return nil
}

// writeSecretFile writes a file that holds secrets: mode 0640, group
// dovecot when it exists (Dovecot's own tools read it), else 0600; an
// existing file keeps its mode and owner.
func writeSecretFile(path string, b []byte) error {
	mode, uid, gid := os.FileMode(0o600), -1, -1
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	} else if gr, err := user.LookupGroup("dovecot"); err == nil && os.Geteuid() == 0 {
		if id, err := strconv.Atoi(gr.Gid); err == nil {
			mode, uid, gid = 0o640, 0, id
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".mailguard-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), mode); err != nil {
		return err
	}
	if gid >= 0 {
		if err := os.Chown(tmp.Name(), uid, gid); err != nil {
			return err
		}
	}
	if err := copyOwner(path, tmp.Name()); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// copyFile copies src to dst with src's mode.
func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
		return err
	}
	return copyOwner(src, dst)
}

// copyOwner gives dst the owner and group of src, when src exists and we
// may (root).
func copyOwner(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil || os.Geteuid() != 0 {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return os.Chown(dst, int(st.Uid), int(st.Gid))
}

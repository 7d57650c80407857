package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A damaged journal line stops the start with exit 2 and names `mailguard
// state`; state check lists the damage and exits 1; state repair moves it to
// a quarantine file, says how many bans are lost, and the daemon starts with
// every other ban.
func TestStateRepair(t *testing.T) {
	d := NewDaemon(t)
	d.Start()
	d.MustCLI("ban", "198.51.100.21")
	d.MustCLI("ban", "198.51.100.22")
	d.Stop()

	ents, _ := os.ReadDir(d.Dir)
	var journals []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "journal.") {
			journals = append(journals, e.Name())
		}
	}
	slices.Sort(journals)
	if len(journals) == 0 {
		t.Fatalf("no journal in %s", d.Dir)
	}
	j := filepath.Join(d.Dir, journals[len(journals)-1])
	f, err := os.OpenFile(j, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"op":"ban","jail":"manual","subject":"net:198.51.100.23/32","exp` + "\x1b[2J\n" + `{"op":"unban","subject":"net:198.51.100.99/32"}` + "\n")
	f.Close()

	serve := exec.Command(binary(t), "serve", "--config", d.Config)
	out, err := serve.CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), j) || !strings.Contains(string(out), "mailguard state repair") {
		t.Fatalf("serve with a damaged journal: exit %d, %q; want exit 2 naming %s and `mailguard state repair`", code, out, j)
	}

	state := func(sub string) (string, int) {
		out, err := exec.Command(binary(t), "state", sub, "--config", d.Config).CombinedOutput()
		return string(out), exitCode(err)
	}
	out2, code := state("check")
	if code != 1 || !strings.Contains(out2, j+" line ") || !strings.Contains(out2, "1 journal line(s), 1 of them ban(s)") {
		t.Errorf("state check: exit %d, %q; want exit 1 listing the line and 1 ban lost", code, out2)
	}
	if strings.Contains(out2, "\x1b") {
		t.Errorf("state check printed a raw control character: %q", out2)
	}
	out2, code = state("repair")
	if code != 0 || !strings.Contains(out2, "moved to "+j+".damaged") || !strings.Contains(out2, "repaired: 1 journal line(s), 1 of them ban(s) lost") {
		t.Errorf("state repair: exit %d, %q; want it to name the quarantine file and 1 ban lost", code, out2)
	}
	if out2, code = state("check"); code != 0 || !strings.Contains(out2, "is good") {
		t.Errorf("state check after repair: exit %d, %q", code, out2)
	}

	d.Start()
	out3 := d.MustCLI("status", "manual")
	if !strings.Contains(out3, "198.51.100.21") || !strings.Contains(out3, "198.51.100.22") {
		t.Errorf("after repair the good bans are missing:\n%s", out3)
	}
	// With the daemon running, repair refuses to touch its files.
	if out2, code = state("repair"); code != 1 || !strings.Contains(out2, "stop the daemon first") {
		t.Errorf("state repair with the daemon running: exit %d, %q", code, out2)
	}
}

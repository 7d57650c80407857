package memstore

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Damaged journal lines stop Open with ErrCorrupt; Check lists them without
// changing a byte; Repair moves them to a quarantine file, counts the bans
// among them, and Open works again with every good record.
func TestCheckAndRepair(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := open(t, Options{Dir: dir, Now: c.Now})
	keys := populate(t, s, c)
	want := stateOf(t, s, keys...)
	s.Close()
	j := lastJournal(t, dir)
	appendFile(t, j, `{"op":"ban","jail":"dovecot","subj`+"\x00garbage\n"+
		`{"op":"frobnicate"}`+"\n"+
		`{"op":"unban","subject":"net:203.0.113.1/32"}`+"\n"+
		`{"op":"ban","jail":"dov`)
	before, _ := os.ReadFile(j)

	_, err := Open(Options{Dir: dir, Now: c.Now, Log: slog.New(slog.DiscardHandler)})
	var ce *CorruptError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || ce.File != j || ce.Line == 0 {
		t.Fatalf("Open with damaged lines = %v, want a *CorruptError naming %s and its line", err, j)
	}

	rep, err := Check(dir)
	if err != nil {
		t.Fatalf("Check = %v", err)
	}
	if len(rep.Damaged) != 3 || !rep.Stops() || !rep.Damaged[2].Torn {
		t.Fatalf("Check found %+v, want 2 damaged lines and a torn last one", rep.Damaged)
	}
	if n, snap := rep.LostBans(); n != 2 || snap {
		t.Errorf("LostBans = %d, %v; want 2 (the damaged and the torn ban), false", n, snap)
	}
	if after, _ := os.ReadFile(j); string(after) != string(before) {
		t.Errorf("Check changed the journal")
	}

	rep, err = Repair(dir)
	if err != nil {
		t.Fatalf("Repair = %v", err)
	}
	if len(rep.Quarantine) != 1 || rep.Quarantine[0] != j+".damaged" {
		t.Fatalf("Repair quarantined to %v, want %s.damaged", rep.Quarantine, j)
	}
	q, _ := os.ReadFile(j + ".damaged")
	if !strings.Contains(string(q), `"op":"frobnicate"`) || !strings.Contains(string(q), "garbage") || strings.Count(string(q), "\n# ") != 2 {
		t.Errorf("quarantine file lacks the damaged lines and their reasons:\n%s", q)
	}
	if rep, err := Check(dir); err != nil || len(rep.Damaged) != 0 {
		t.Errorf("Check after Repair = %+v, %v; want clean", rep.Damaged, err)
	}
	s, err = Open(Options{Dir: dir, Now: c.Now})
	if err != nil {
		t.Fatalf("Open after Repair = %v", err)
	}
	defer s.Close()
	if got := stateOf(t, s, keys...); !sameState(got, want) {
		t.Errorf("state after Repair:\n got %v\nwant %v", got, want)
	}
	if _, err := Repair(dir); !errors.Is(err, ErrLocked) {
		t.Errorf("Repair with the store open = %v, want ErrLocked", err)
	}
}

// A damaged snapshot is moved aside whole and reported as such.
func TestRepairSnapshot(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, snapshotName)
	os.WriteFile(p, []byte(`{"version":1,"bans":[{`), 0o600)
	rep, err := Repair(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, snap := rep.LostBans(); !snap || len(rep.Quarantine) != 1 {
		t.Fatalf("Repair of a damaged snapshot = %+v", rep)
	}
	if _, err := os.Stat(p + ".damaged"); err != nil {
		t.Errorf("damaged snapshot not kept aside: %v", err)
	}
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("Open after Repair = %v", err)
	}
	s.Close()
}

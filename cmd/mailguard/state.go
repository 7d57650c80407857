package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/internal/escape"
	"github.com/mailguard/mailguard/store/memstore"
)

func stateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "state check|repair",
		Short: "check or repair the embedded store's files in state_dir",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return &exitError{exitUsage, fmt.Errorf("state takes a subcommand: check or repair")}
		},
	}
	check := &cobra.Command{
		Use:   "check",
		Short: "list damaged journal lines and snapshot (changes nothing; exit 1 when the daemon could not start)",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load()
			if err != nil {
				return err
			}
			rep, err := memstore.Check(c.StateDir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			printDamage(out, rep)
			if !rep.Stops() {
				fmt.Fprintf(out, "state in %s is good: %d journal(s), %d records\n", escape.String(rep.Dir), rep.Journals, rep.Records)
				return nil
			}
			return &exitError{exitRefused, fmt.Errorf("state in %s is damaged: %s would be lost; run `mailguard state repair` with the daemon stopped",
				escape.String(rep.Dir), lost(rep))}
		},
	}
	repair := &cobra.Command{
		Use:   "repair",
		Short: "move damaged journal lines (and a damaged snapshot) to *.damaged files beside them, so the daemon starts",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load()
			if err != nil {
				return err
			}
			rep, err := memstore.Repair(c.StateDir)
			if errors.Is(err, memstore.ErrLocked) {
				return &exitError{exitRefused, fmt.Errorf("%w: stop the daemon first (systemctl stop mailguard)", err)}
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			printDamage(out, rep)
			if len(rep.Quarantine) == 0 {
				fmt.Fprintf(out, "state in %s is good: nothing to repair\n", escape.String(rep.Dir))
				return nil
			}
			for _, q := range rep.Quarantine {
				fmt.Fprintf(out, "moved to %s\n", escape.String(q))
			}
			fmt.Fprintf(out, "repaired: %s lost; %d good records kept; the daemon can start\n", lost(rep), rep.Records)
			return nil
		},
	}
	cmd.AddCommand(check, repair)
	return cmd
}

func printDamage(w io.Writer, rep memstore.Report) {
	for _, d := range rep.Damaged {
		what := "damaged"
		if d.Torn {
			what = "torn by a crash (dropped at start by itself)"
		}
		if d.Line == 0 {
			fmt.Fprintf(w, "%s: %s: %s\n", escape.String(d.File), what, escape.String(d.Err.Error()))
			continue
		}
		kind := "record"
		if d.Op != "" {
			kind = escape.String(d.Op) + " record"
		}
		fmt.Fprintf(w, "%s line %d: %s %s: %s\n", escape.String(d.File), d.Line, what, kind, escape.String(d.Err.Error()))
	}
}

// lost says what the damage costs: "3 lines (2 bans)".
func lost(rep memstore.Report) string {
	bans, snap := rep.LostBans()
	lines := 0
	for _, d := range rep.Damaged {
		if d.Line > 0 {
			lines++
		}
	}
	s := fmt.Sprintf("%d journal line(s), %d of them ban(s)", lines, bans)
	if snap {
		s += ", and the snapshot with every ban, ban history and known device it held"
	}
	return s
}

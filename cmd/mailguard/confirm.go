package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/admin"
	"github.com/mailguard/mailguard/internal/escape"
)

// confirmCmd is `mailguard confirm`: apply the bans the blast-radius guard
// (safety.max_bans_per_minute) holds back.
func confirmCmd(g *globals) *cobra.Command {
	var all, list, asJSON bool
	cmd := &cobra.Command{
		Use:   "confirm --all | IP|PREFIX|USER | --list",
		Short: "apply the bans held back by the blast-radius guard (all, or one subject's)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if list == (all || len(args) == 1) || all && len(args) == 1 {
				return &exitError{exitUsage, fmt.Errorf("confirm: give --all, one IP|PREFIX|USER, or --list\nusage: mailguard %s", cmd.Use)}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if list {
				h, err := c.Held(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					e := json.NewEncoder(out)
					e.SetIndent("", "  ")
					return e.Encode(h)
				}
				admin.PrintHeld(out, h, time.Now())
				return nil
			}
			target := ""
			if len(args) == 1 {
				target = args[0]
			}
			r, err := c.Confirm(cmd.Context(), target)
			if err != nil {
				return err
			}
			if asJSON {
				e := json.NewEncoder(out)
				e.SetIndent("", "  ")
				return e.Encode(r)
			}
			for _, b := range r.Bans {
				fmt.Fprintf(out, "banned %s in jail %s until %s\n", escape.String(admin.Target(b.Subject)), escape.String(b.Jail), b.Expires.Local().Format(time.RFC3339))
			}
			fmt.Fprintf(out, "confirmed %d held bans", len(r.Bans))
			if r.Expired > 0 {
				fmt.Fprintf(out, "; %d had run out meanwhile and were dropped", r.Expired)
			}
			fmt.Fprintln(out)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "apply every held ban")
	cmd.Flags().BoolVar(&list, "list", false, "list the held bans instead")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

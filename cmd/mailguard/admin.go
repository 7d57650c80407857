package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/mailguard/mailguard/admin"
	"github.com/mailguard/mailguard/internal/escape"
)

func statusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [JAIL]",
		Short: "show jails, failures and bans (like fail2ban-client status)",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return &exitError{exitUsage, fmt.Errorf("status takes at most one jail")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			jail := ""
			if len(args) == 1 {
				jail = args[0]
			}
			sts, err := c.Status(cmd.Context(), jail)
			if err != nil {
				return err
			}
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(sts)
			}
			admin.PrintStatus(cmd.OutOrStdout(), sts, time.Now())
			if jail == "" {
				// A daemon older than the shared-address rule has no /shared.
				if sh, err := c.Shared(cmd.Context()); err == nil {
					admin.PrintShared(cmd.OutOrStdout(), sh)
				}
				// Nor one older than the blast-radius guard /held.
				if h, err := c.Held(cmd.Context()); err == nil {
					admin.PrintHeld(cmd.OutOrStdout(), h, time.Now())
				}
				return printTOTPStatus(cmd, c)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func banCmd(g *globals) *cobra.Command {
	var jail string
	var d time.Duration
	cmd := &cobra.Command{
		Use:   "ban IP|PREFIX|USER",
		Short: "ban an address, prefix or login on every node",
		Args:  usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			b, err := c.Ban(cmd.Context(), args[0], jail, d)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "banned %s in jail %s until %s\n", escape.String(admin.Target(b.Subject)), escape.String(b.Jail), b.Expires.Local().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&jail, "jail", "", "jail to ban in (default: manual, firewalled on every jail's ports)")
	cmd.Flags().DurationVar(&d, "for", 0, "ban duration (default: the jail's bantime, 1h for manual)")
	return cmd
}

func unbanCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "unban IP|PREFIX|USER",
		Short: "lift every ban on an address, prefix or login, on every node",
		Args:  usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			lifted, err := c.Unban(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var jails []string
			for _, b := range lifted {
				jails = append(jails, escape.String(b.Jail))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unbanned %s (jails: %s)\n", escape.String(args[0]), strings.Join(jails, ", "))
			return nil
		},
	}
}

func checkConfigCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check-config",
		Short: "validate the configuration and print the effective config",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load()
			if err != nil {
				return err
			}
			// Every key declared secret is masked (config.SecretKeys).
			out, err := yaml.Marshal(c.Masked())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# configuration is valid\n%s", out)
			return nil
		},
	}
}

// printTOTPStatus adds the TOTP line to status when TOTP is on.
func printTOTPStatus(cmd *cobra.Command, c *admin.Client) error {
	ts, err := c.TOTPStatus(cmd.Context())
	var ae *admin.APIError
	if errors.As(err, &ae) && ae.Code == admin.CodeDisabled {
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "TOTP: %d user(s) enrolled, %d approved device(s) active\n", ts.Enrolled, ts.Approvals)
	return nil
}

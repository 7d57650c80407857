package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/enforce"
	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/metrics"
	"github.com/mailguard/mailguard/store"
)

// startFirewall opens firewall.backend and runs the enforcer that keeps the
// kernel equal to the store's bans. With backend none it only logs so. stop
// ends the enforcer, waits for its last firewall call, and then closes the
// backend: never the other way round.
func startFirewall(ctx context.Context, c config.Config, g *guard.Guard, st store.Store, reg *metrics.Registry, log *slog.Logger, run func(string, func() error)) (stop func(), err error) {
	fw, err := firewall.Open(ctx, c.Firewall.Backend, firewall.Options{Log: log.With("firewall", c.Firewall.Backend)})
	if err != nil {
		return nil, fmt.Errorf("firewall.backend %s: %w", c.Firewall.Backend, err)
	}
	if c.Firewall.Backend == firewall.NameNone {
		return func() { fw.Close() }, nil
	}
	interval := c.Firewall.ReconcileInterval.D()
	if c.Store.Backend == "redis" {
		interval = min(interval, c.Store.Redis.ReconcileInterval.D())
	}
	e := &enforce.Enforcer{Guard: g, Store: st, Firewall: fw, Interval: interval, Log: log.With("firewall", c.Firewall.Backend), Metrics: reg}
	ectx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	run("firewall", func() error {
		defer close(done)
		return e.Run(ectx)
	})
	return func() {
		cancel()
		<-done
		fw.Close()
	}, nil
}

func firewallCmd(g *globals) *cobra.Command {
	var backend string
	cmd := &cobra.Command{
		Use:   "firewall list|flush",
		Short: "show or remove the bans mailguard put in the kernel firewall (root; no daemon needed)",
	}
	name := func() (string, error) {
		if backend != "" {
			return backend, nil
		}
		c, err := g.load()
		if err != nil {
			return "", err
		}
		return c.Firewall.Backend, nil
	}
	list := &cobra.Command{
		Use: "list", Short: "print the bans the kernel holds", Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := name()
			if err != nil {
				return err
			}
			entries, err := firewall.List(cmd.Context(), b, firewall.Options{})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprintln(w, "PREFIX\tPORTS\tEXPIRES")
			for _, e := range entries {
				ports := "all"
				if len(e.Ports) > 0 {
					ports = strings.Trim(strings.Join(strings.Fields(fmt.Sprint(e.Ports)), ","), "[]")
				}
				exp := "never"
				if !e.Expires.IsZero() {
					exp = fmt.Sprintf("%s (%s left)", e.Expires.Local().Format(time.RFC3339), time.Until(e.Expires).Round(time.Second))
				}
				fmt.Fprintf(w, "%s\t%s\t%s\n", e.Prefix, ports, exp)
			}
			w.Flush()
			fmt.Fprintf(cmd.OutOrStdout(), "%d bans in the %s firewall\n", len(entries), b)
			return nil
		},
	}
	flush := &cobra.Command{
		Use: "flush", Short: "remove everything mailguard added to the firewall (a running daemon re-adds its bans at the next reconcile)", Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := name()
			if err != nil {
				return err
			}
			if err := firewall.Flush(cmd.Context(), b, firewall.Options{}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed mailguard's %s table/chains and bans\n", b)
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&backend, "backend", "", "nftables or iptables (default firewall.backend)")
	cmd.AddCommand(list, flush)
	return cmd
}

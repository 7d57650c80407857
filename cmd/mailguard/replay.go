package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/internal/escape"
	"github.com/mailguard/mailguard/replay"
)

// replayCmd is `mailguard replay`: the what-if of a new config over the
// recorded audit trail (package replay). --config (the global flag) names
// the NEW config; the audit file defaults to audit.file of the running
// config (--running, default the config mailguard serve reads).
func replayCmd(g *globals) *cobra.Command {
	var (
		asJSON, unknown bool
		since           time.Duration
		running, known  string
	)
	cmd := &cobra.Command{
		Use:   "replay --config NEW.yaml [--since 24h] [AUDIT-FILE]",
		Short: "run the recorded failures through another config's jails and print the bans that differ",
		Long: `replay runs the recorded audit trail (audit.file, with its rotated files)
through the jails of the config named by --config, in a throwaway embedded
store driven by the events' clock, and prints one line per differing ban:
"+ SUBJECT JAIL ..." only the new config bans, "- SUBJECT JAIL ..." only the
recorded run banned; then a summary per jail, and the users the new config
would refuse from their known devices (--known), which makes it exit 1.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return &exitError{exitUsage, fmt.Errorf("replay takes at most 1 argument (the audit file), got %d\nusage: mailguard %s", len(args), cmd.Use)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.load()
			if err != nil {
				return err
			}
			path := ""
			if len(args) == 1 {
				path = args[0]
			} else {
				rc, err := config.Load(running, nil)
				if err != nil {
					return &exitError{exitUsage, fmt.Errorf("--running: %w", err)}
				}
				if path = rc.Audit.File; path == "" {
					return &exitError{exitUsage, fmt.Errorf("no audit file: name one, or set audit.file in the running config (--running, default %s)", config.DefaultFile)}
				}
			}
			o := replay.Options{Guard: policy(c, nil), RefusalsUnknown: unknown}
			if since > 0 {
				o.Since = time.Now().Add(-since)
			}
			if known != "" {
				if o.Known, err = readKnown(known); err != nil {
					return &exitError{exitUsage, err}
				}
			}
			rp, err := replay.New(o)
			if err != nil {
				return &exitError{exitUsage, err}
			}
			defer rp.Close()
			start := time.Now()
			if err := rp.ReadFiles(cmd.Context(), path); err != nil {
				return err
			}
			res := rp.Result()
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				err = e.Encode(res)
			} else {
				err = replay.Print(cmd.OutOrStdout(), res)
				fmt.Fprintf(cmd.OutOrStdout(), "(%d lines in %s)\n", res.Lines, time.Since(start).Round(time.Millisecond))
			}
			if err != nil {
				return err
			}
			if len(res.Known) > 0 {
				return &exitError{exitRefused, fmt.Errorf("the new config refuses %d login(s) from known devices (the lines marked !!!)", len(res.Known))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&since, "since", 0, "replay only the events of this last span (e.g. 24h; default: all)")
	cmd.Flags().StringVar(&running, "running", "", "the running config, whose audit.file is the default AUDIT-FILE (default "+config.DefaultFile+" when present)")
	cmd.Flags().StringVar(&known, "known", "", "a file of known devices, one \"LOGIN ADDRESS\" a line (the trail holds no successful logins)")
	cmd.Flags().BoolVar(&unknown, "refusals-unknown", false, "count recorded refusals the new config lets through as let through only, not as failed logins")
	return cmd
}

// readKnown reads "LOGIN ADDRESS" lines; blank lines and # comments are
// skipped.
func readKnown(path string) ([]replay.Device, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--known: %w", err)
	}
	defer f.Close()
	return parseKnown(f, path)
}

func parseKnown(r io.Reader, name string) ([]replay.Device, error) {
	var out []replay.Device
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("--known %s line %d: want LOGIN ADDRESS, got %q", name, n, escape.String(line))
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("--known %s line %d: invalid address %q", name, n, escape.String(f[1]))
		}
		out = append(out, replay.Device{User: f[0], Addr: a})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--known %s: %w", name, err)
	}
	return out, nil
}

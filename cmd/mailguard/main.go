// Command mailguard guards Postfix and Dovecot against password guessing and
// abuse: `mailguard serve` runs the daemon; the other commands talk to it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/admin"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/internal/escape"
)

// Version is set at build time (-ldflags "-X main.Version=...").
var Version = "dev"

// Exit codes a script can rely on.
const (
	exitOK          = 0
	exitRefused     = 1 // the daemon said no: not banned, ignoreip, unknown jail
	exitUsage       = 2 // bad flags, bad config
	exitUnreachable = 3 // no daemon on the admin socket
	exitUnavailable = 4 // the daemon answered, but its store failed or timed out: try again
)

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	g := &globals{}
	err := newRoot(g).ExecuteContext(ctx)
	stop()
	if err != nil {
		// Masked: an error may quote a secret it was given (a Redis URL
		// that does not parse); escaped: it may quote what a client sent
		// or an admin typed.
		fmt.Fprintln(os.Stderr, "mailguard:", escape.Lines(g.cfg.Redact(err.Error())))
		os.Exit(exitCode(err))
	}
}

func exitCode(err error) int {
	var ee *exitError
	var ue *admin.UnreachableError
	var ae *admin.APIError
	var ce config.Errors
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue):
		return exitUnreachable
	case errors.As(err, &ae) && ae.Code == admin.CodeUnavailable:
		return exitUnavailable
	case errors.As(err, &ae):
		return exitRefused
	case errors.As(err, &ce), errors.Is(err, admin.ErrUnsafeSocket):
		return exitUsage
	}
	return exitRefused
}

type globals struct {
	configFile string
	sets       []string
	socket     string
	cfg        config.Config // the last config loaded: its secrets are masked in errors
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "mailguard",
		Short:         "Brute-force and abuse guard for Postfix and Dovecot",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&g.configFile, "config", "c", "", "config file (default "+config.DefaultFile+" when present, else built-in defaults)")
	root.PersistentFlags().StringArrayVar(&g.sets, "set", nil, "override a config key, KEY=VALUE (repeatable), e.g. --set store.fail_mode=closed")
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "admin socket (default admin.socket; env MAILGUARD_ADMIN_SOCKET)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &exitError{exitUsage, fmt.Errorf("%w\nsee 'mailguard %s --help'", err, c.Name())}
	})
	root.AddCommand(serveCmd(g), statusCmd(g), banCmd(g), unbanCmd(g), explainCmd(g), checkConfigCmd(g), versionCmd(),
		firewallCmd(g), simulateCmd(), setupCmd(g), doctorCmd(g), stateCmd(g), testFilterCmd(), totpCmd(g),
		replayCmd(g), confirmCmd(g))
	return root
}

func (g *globals) load() (config.Config, error) {
	c, err := config.Load(g.configFile, g.sets)
	g.cfg = c
	if err != nil {
		return c, &exitError{exitUsage, err}
	}
	return c, nil
}

// client finds the admin socket: --socket, then the config (which
// MAILGUARD_ADMIN_SOCKET overrides), then the built-in default.
func (g *globals) client() (*admin.Client, error) {
	if g.socket != "" {
		return &admin.Client{Socket: g.socket}, nil
	}
	c, err := g.load()
	if err != nil {
		return nil, err
	}
	return &admin.Client{Socket: c.Admin.Socket}, nil
}

func usageArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return &exitError{exitUsage, fmt.Errorf("%s takes %d argument(s), got %d\nusage: mailguard %s", cmd.Name(), n, len(args), cmd.Use)}
		}
		return nil
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use: "version", Short: "print the version", Args: usageArgs(0),
		Run: func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "mailguard", Version) },
	}
}

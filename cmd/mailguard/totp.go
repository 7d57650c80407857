package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/internal/escape"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/totp"
)

// secondFactor is guard's TOTP policy from totp.* (zero when off).
func secondFactor(c config.Config) guard.SecondFactor {
	if !c.TOTP.Enabled {
		return guard.SecondFactor{}
	}
	tp := totp.Prefixes{IPv4: c.TOTP.TrustPrefix.IPv4, IPv6: c.TOTP.TrustPrefix.IPv6}
	return guard.SecondFactor{Prefix: tp.Of, PendingTTL: c.TOTP.PendingTTL.D()}
}

// openTOTP starts the TOTP service when totp.enabled (nil, nil when off).
// The key file is made on the first start only while nobody is enrolled: a
// missing or wrong key over stored secrets stops the start.
func openTOTP(ctx context.Context, c config.Config, st store.Store, g *guard.Guard, log *slog.Logger) (*totp.Service, error) {
	if !c.TOTP.Enabled {
		return nil, nil
	}
	ts, ok := st.(store.TOTPStore)
	if !ok {
		return nil, fmt.Errorf("totp: the %s store keeps no TOTP state", c.Store.Backend)
	}
	n, err := totp.Enrolled(ctx, ts)
	if err != nil {
		return nil, err
	}
	path := c.TOTPKeyFile()
	key, err := totp.LoadKey(path, n == 0)
	if err != nil {
		if n > 0 {
			err = fmt.Errorf("%w (%d users are enrolled: restore the key file their secrets were sealed with, or disable TOTP)", err, n)
		}
		return nil, &exitError{exitUsage, fmt.Errorf("totp.key_file: %w", err)}
	}
	svc, err := totp.New(ctx, ts, key, totp.Config{
		Issuer: c.TOTP.Issuer, TrustTTL: c.TOTP.TrustTTL.D(),
		TrustPrefix: totp.Prefixes{IPv4: c.TOTP.TrustPrefix.IPv4, IPv6: c.TOTP.TrustPrefix.IPv6},
		Limiter:     g, Log: log.With("frontend", "totp"),
	})
	if errors.Is(err, totp.ErrKey) {
		return nil, &exitError{exitUsage, fmt.Errorf("totp.key_file %s: %w", path, err)}
	}
	if err != nil {
		return nil, err
	}
	log.Info("totp second factor on", "url", c.TOTP.URL, "listen", c.TOTP.Listen, "enrolled", n, "key_file", path)
	return svc, nil
}

// pageServer is what serve runs on totp.listen: the approval and
// enrolment pages (package totp/web).
type pageServer interface {
	Serve(l net.Listener) error
	Close() error
}

// totpPages is the hook where the pages are mounted: it returns the server
// for totp.listen, or nil while there is none (then totp.listen is not
// bound, and users are approved with `mailguard totp trust`).
func totpPages(svc *totp.Service, c config.Config, log *slog.Logger) (pageServer, error) {
	if svc == nil {
		return nil, nil
	}
	p, err := totpWeb(svc, c, log) // totpweb.go
	if err != nil {
		return nil, err
	}
	return p, nil
}

func totpCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "totp",
		Short: "TOTP second factor: enrol users, approve their devices",
	}
	cmd.AddCommand(totpEnrolCmd(g), totpDisableCmd(g), totpListCmd(g), totpCheckCmd(g),
		totpTrustCmd(g), totpUntrustCmd(g), totpPendingCmd(g))
	return cmd
}

func totpEnrolCmd(g *globals) *cobra.Command {
	var link bool
	cmd := &cobra.Command{
		Use:   "enroll USER",
		Short: "give USER a TOTP secret (prints the otpauth:// URL and its QR code), or with --link a one-time enrolment link",
		Args:  usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			e, err := c.TOTPEnrol(cmd.Context(), args[0], link)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if link {
				fmt.Fprintf(out, "enrolment link for %s (works once; the enrolment counts after a first code on that page):\n%s\n",
					escape.String(e.User), escape.String(e.Link))
				return nil
			}
			qr, err := totp.Terminal(e.URL)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s is enrolled: from now on their mail logins need an approved device.\nScan this with an authenticator app, or enter the URL (it holds the secret: do not mail it):\n\n%s\n%s\n",
				escape.String(e.User), qr, escape.String(e.URL))
			return nil
		},
	}
	cmd.Flags().BoolVar(&link, "link", false, "print a one-time link to the self-enrolment page instead (totp.url)")
	return cmd
}

func totpDisableCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "disable USER",
		Short: "remove USER's TOTP enrolment, approvals and pending logins",
		Args:  usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.TOTPDisable(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "TOTP disabled for %s\n", escape.String(args[0]))
			return nil
		},
	}
}

func totpListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "list the enrolled users and their approved devices",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			us, err := c.TOTPList(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(us) == 0 {
				fmt.Fprintln(out, "no user has enrolled")
			}
			for _, u := range us {
				fmt.Fprintf(out, "%s  enrolled %s  %d approved\n", escape.String(u.User), u.Enrolled.Local().Format(time.RFC3339), len(u.Approvals))
				for _, a := range u.Approvals {
					fmt.Fprintf(out, "  %s until %s\n", a.Prefix, a.Expires.Local().Format(time.RFC3339))
				}
			}
			return nil
		},
	}
}

func totpCheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check USER CODE",
		Short: "verify a code of USER without approving anything (exit 0 or 1; counted, used up when right)",
		Args:  usageArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			r, err := c.TOTPCheck(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if !r.OK {
				return &exitError{exitRefused, fmt.Errorf("code refused: %s", r.Reason)}
			}
			fmt.Fprintln(cmd.OutOrStdout(), "code accepted")
			return nil
		},
	}
}

func totpTrustCmd(g *globals) *cobra.Command {
	var d time.Duration
	cmd := &cobra.Command{
		Use:   "trust USER IP|PREFIX",
		Short: "approve USER's logins from an address's trust prefix (totp.trust_prefix) or that prefix",
		Args:  usageArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			a, err := c.TOTPTrust(cmd.Context(), args[0], args[1], d)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "approved %s for %s until %s\n", a.Prefix, escape.String(a.User), a.Expires.Local().Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().DurationVar(&d, "for", 0, "how long (default: totp.trust_ttl)")
	return cmd
}

func totpUntrustCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "untrust USER [IP|PREFIX]",
		Short: "remove USER's approval of an address's trust prefix, or all of USER's approvals",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 || len(args) > 2 {
				return &exitError{exitUsage, fmt.Errorf("untrust takes a user and at most one address or prefix\nusage: mailguard totp %s", cmd.Use)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			target := ""
			if len(args) == 2 {
				target = args[1]
			}
			n, err := c.TOTPUntrust(cmd.Context(), args[0], target)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d approval(s) of %s\n", n, escape.String(args[0]))
			return nil
		},
	}
}

func totpPendingCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "pending USER",
		Short: "list USER's refused logins waiting for approval",
		Args:  usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ps, err := c.TOTPPending(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(ps) == 0 {
				fmt.Fprintf(out, "no pending login for %s\n", escape.String(args[0]))
			}
			for _, p := range ps {
				fmt.Fprintf(out, "%s  %s from %s (%s)\n", p.At.Local().Format(time.RFC3339), escape.String(p.Protocol), p.Addr, p.Prefix)
			}
			return nil
		},
	}
}

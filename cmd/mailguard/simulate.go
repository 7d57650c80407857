package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/simulate"
)

func simulateCmd() *cobra.Command {
	var o simulate.Options
	var source string
	cmd := &cobra.Command{
		Use:   "simulate --target IP:PORT --protocol imap|pop3|smtp --user LOGIN [--starttls|--tls [--insecure]]",
		Short: "log in with wrong passwords N times and show when mailguard starts refusing",
		Long: `simulate plays a password-guessing client against one mail server you name
(an IP address and port; plaintext, --starttls or --tls) and prints, for every
attempt, what the server answered, and at which attempt mailguard started
refusing. A setup that cannot work (TLS wanted, no AUTH offered, certificate not
trusted) ends with exit 2 and a hint.`,
		Args: usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Target == "" || o.User == "" {
				return &exitError{exitUsage, fmt.Errorf("simulate needs --target IP:PORT and --user LOGIN")}
			}
			if source != "" {
				a, err := netip.ParseAddr(source)
				if err != nil {
					return &exitError{exitUsage, fmt.Errorf("--source %q: not an IP address", source)}
				}
				o.Source = a
			}
			o.Out = cmd.OutOrStdout()
			_, err := simulate.Run(cmd.Context(), o)
			if se := (*simulate.SetupError)(nil); errors.As(err, &se) {
				return &exitError{exitUsage, err}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Target, "target", "", "server to try, IP:PORT (host names are refused)")
	f.StringVar(&o.Protocol, "protocol", "imap", "imap, pop3 or smtp (AUTH PLAIN)")
	f.StringVar(&o.User, "user", "", "login to try")
	f.StringVar(&o.Password, "password", "", "wrong password to send (default: a different one per attempt)")
	f.IntVar(&o.Attempts, "attempts", 10, "number of attempts (at most 1000)")
	f.StringVar(&source, "source", "", "local address to connect from, e.g. 127.0.0.2")
	f.DurationVar(&o.Delay, "delay", 0, "pause between attempts")
	f.DurationVar(&o.Timeout, "timeout", 30*time.Second, "longest wait for one attempt")
	f.BoolVar(&o.StartTLS, "starttls", false, "upgrade to TLS before logging in (IMAP 143, POP3 110, SMTP submission 587)")
	f.BoolVar(&o.TLS, "tls", false, "TLS from the first byte (IMAPS 993, POP3S 995, SMTPS 465)")
	f.BoolVar(&o.Insecure, "insecure", false, "accept any certificate (self-signed test servers)")
	f.StringVar(&o.ServerName, "servername", "", "name the certificate must carry, also sent as SNI (default: the target's address)")
	f.StringVar(&o.RejectMsg, "reject-msg", simulate.DefaultRejectMsg, "mailguard's dovecot.reject_msg, if changed")
	f.StringVar(&o.RejectUserMsg, "reject-msg-user", simulate.DefaultRejectUserMsg, "mailguard's dovecot.reject_msg_user, if changed")
	return cmd
}

package main

import (
	"encoding/json"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/admin"
)

func explainCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "explain IP|PREFIX|USER|ID",
		Short: "tell why an address, prefix or login is (or was) refused, from the audit trail",
		Args:  usageArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			x, err := c.Explain(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(x)
			}
			admin.PrintExplain(cmd.OutOrStdout(), x)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

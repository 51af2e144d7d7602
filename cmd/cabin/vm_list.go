package main

import (
	"fmt"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newVMListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "list [--json]",
		Aliases: []string{"ls"},
		Short:   "List the VMs",
		Long: "list shows the VMs cabind manages for --owner (yours, when you are not root),\n" +
			"as a table, and after it why any VM cabind cannot control is unreachable.\n" +
			"With --json it prints one JSON array of cabin.v1.Vm objects in protojson\n" +
			"(proto field names, all fields, enums by name); [] when there are none.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVMList(cmd, g, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func runVMList(cmd *cobra.Command, g *globals, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := cabinv1.NewVmsClient(conn).ListVms(cmd.Context(), &cabinv1.ListVmsRequest{OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("list VMs: %w", err)
	}
	if asJSON {
		return writeJSONArray(cmd.OutOrStdout(), resp.GetVms())
	}
	return writeVMTable(cmd.OutOrStdout(), resp.GetVms())
}

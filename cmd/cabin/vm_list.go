package main

import (
	"fmt"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newVMListCmd(g *globals) *cobra.Command {
	var asJSON, all bool
	var lf listFormat
	cmd := &cobra.Command{
		Use:     "list [-a] [--json | -q | --format TEMPLATE]",
		Aliases: []string{"ls"},
		Short:   "List the VMs",
		Long: "list shows the VMs cabind manages for --owner (yours, when you are not root),\n" +
			"as a table, and after it why any VM cabind cannot control is unreachable.\n" +
			"With --json it prints one JSON array of cabin.v1.Vm objects in protojson\n" +
			"(proto field names, all fields, enums by name); [] when there are none.\n" +
			"-q prints the names only; --format runs a Go template on each cabin.v1.Vm\n" +
			"(Go field names). With -a, VMs that do not run are listed too, with when and\n" +
			"why their last run ended, until `cabin vm rm`, `cabin vm prune` or their next\n" +
			"start.",
		Example: "  cabin vm list\n" +
			"  cabin vm list -q | xargs -n1 cabin vm stop\n" +
			"  cabin vm list --format '{{.Name}} {{.Pid}} {{.MemoryMib}}'",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := noArgs(cmd, args); err != nil {
				return err
			}
			return lf.check(asJSON)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVMList(cmd, g, asJSON, all, lf)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	lf.add(cmd.Flags())
	cmd.Flags().BoolVarP(&all, "all", "a", false, "also the VMs that do not run, as their last run ended")
	return cmd
}

func runVMList(cmd *cobra.Command, g *globals, asJSON, all bool, lf listFormat) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := cabinv1.NewVmsClient(conn).ListVms(cmd.Context(), &cabinv1.ListVmsRequest{OwnerId: g.owner, All: all})
	if err != nil {
		return fmt.Errorf("list VMs: %w", err)
	}
	if asJSON {
		return writeJSONArray(cmd.OutOrStdout(), resp.GetVms())
	}
	if lf.set() {
		return writeFormatted(cmd.OutOrStdout(), lf, resp.GetVms(), (*cabinv1.Vm).GetName)
	}
	return writeVMTable(cmd.OutOrStdout(), resp.GetVms())
}

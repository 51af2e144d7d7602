package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newVMAdjustCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "adjust NAME OPERATION [PARAM...] [--json]",
		Short: "Adjust a running VM (concierge's AdjustVm)",
		Long: "adjust runs one of concierge's AdjustVm operations on the VM NAME:\n" +
			"  memsize MIB    the guest may use MIB of its memory; the balloon holds the\n" +
			"                 rest (64 to the VM's memory)\n" +
			"  balloon BYTES  the balloon holds BYTES of the guest's memory\n" +
			"Upstream's rename and pvm.shared-profile are for Plugin VMs, which cabin\n" +
			"cannot run. --json prints concierge's SuccessFailureResponse.",
		Example: "  cabin vm adjust web memsize 256",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef("%s needs a VM name and an operation", verb(cmd))
			}
			return nameArg(cmd, args[:1])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMAdjust(cmd, g, args[0], args[1], args[2:], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func runVMAdjust(cmd *cobra.Command, g *globals, name, op string, params []string, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := concierge.NewVmConciergeClient(conn).AdjustVm(cmd.Context(), &concierge.AdjustVmRequest{
		Name: name, OwnerId: g.owner, Operation: op, Params: params,
	})
	if err != nil {
		return fmt.Errorf("adjust %s: %w", name, err)
	}
	if asJSON {
		if err := writeJSON(cmd.OutOrStdout(), resp); err != nil {
			return err
		}
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("adjust %s: %s", name, orUnknown(resp.GetFailureReason()))
	}
	if !asJSON {
		fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", name, strings.Join(append([]string{op}, params...), " "))
	}
	return nil
}

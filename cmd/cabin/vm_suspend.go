package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newVMSuspendCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "suspend NAME [--json]",
		Example: "  cabin vm suspend dev",
		Short:   "Suspend a VM: its vCPUs stop, its memory stays",
		Long: "suspend tells the VM's guest a suspend is coming (it syncs its disks), then\n" +
			"stops its vCPUs. The VM keeps its memory and devices, and `cabin vm list`\n" +
			"shows it suspended until `cabin vm resume`; `cabin vm stop` stops it as it\n" +
			"is. Suspending a suspended VM does nothing. --json prints concierge's\n" +
			"SuccessFailureResponse.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMPower(cmd, g, args[0], true, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func newVMResumeCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "resume NAME [--json]",
		Example: "  cabin vm resume dev",
		Short:   "Resume a suspended VM and set its clock",
		Long: "resume runs a suspended VM's vCPUs again, then sets its guest's clock from\n" +
			"the host's (it stood still meanwhile). Resuming a running VM only sets its\n" +
			"clock. --json prints concierge's SuccessFailureResponse.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMPower(cmd, g, args[0], false, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

// runVMPower suspends (suspend) or resumes the VM name.
func runVMPower(cmd *cobra.Command, g *globals, name string, suspend, asJSON bool) error {
	what := "resume"
	if suspend {
		what = "suspend"
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	client := concierge.NewVmConciergeClient(conn)
	// Concierge answers success for a VM that is not there, as upstream;
	// a person naming one has most likely mistyped it.
	info, err := client.GetVmInfo(cmd.Context(), &concierge.GetVmInfoRequest{Name: name, OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, name, err)
	}
	if !info.GetSuccess() {
		return fmt.Errorf("no VM named %s", name)
	}
	var resp *concierge.SuccessFailureResponse
	if suspend {
		resp, err = client.SuspendVm(cmd.Context(), &concierge.SuspendVmRequest{Name: name, OwnerId: g.owner})
	} else {
		resp, err = client.ResumeVm(cmd.Context(), &concierge.ResumeVmRequest{Name: name, OwnerId: g.owner})
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, name, err)
	}
	if asJSON {
		if err := writeJSON(cmd.OutOrStdout(), resp); err != nil {
			return err
		}
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("%s %s: %s", what, name, orUnknown(resp.GetFailureReason()))
	}
	if !asJSON {
		fmt.Fprintf(cmd.OutOrStdout(), "%sed %s\n", what, name)
	}
	return nil
}

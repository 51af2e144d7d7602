package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newVMInfoCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use: "info NAME [--json]",
		Example: "  cabin vm info dev\n" +
			"  cabin vm info dev --json",
		Short: "Show one VM",
		Long: "info shows the VM NAME, and why it is unreachable if cabind cannot control\n" +
			"it, then its disks (id, guest device, image, mount point) and shared folders,\n" +
			"and, for a running VM, its memory balloon and the guest's available and free\n" +
			"memory (`cabin vm balloon NAME`).\n" +
			"With --json it prints one cabin.v1.Vm object, the same shape as an\n" +
			"element of `cabin vm list --json`.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMInfo(cmd, g, args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func runVMInfo(cmd *cobra.Command, g *globals, name string, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	vm, err := cabinv1.NewVmsClient(conn).GetVm(cmd.Context(), &cabinv1.GetVmRequest{Name: name, OwnerId: g.owner})
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("no VM named %s", name)
	}
	if err != nil {
		return fmt.Errorf("info %s: %w", name, err)
	}
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), vm)
	}
	if err := writeVMInfo(cmd.OutOrStdout(), vm); err != nil {
		return err
	}
	if err := writeVMStorage(cmd.OutOrStdout(), vm); err != nil {
		return err
	}
	return writeVMBalloon(cmd, conn, g, name)
}

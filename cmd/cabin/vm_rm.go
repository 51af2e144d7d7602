package main

import (
	"fmt"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newVMRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"remove"},
		Example: "  cabin vm rm dev",
		Short:   "Forget a stopped VM's last run, its logs with it",
		Long: "rm removes what cabind keeps of a VM that does not run: the record of its\n" +
			"last run (listed by `cabin vm list -a`) and its logs. A running VM must be\n" +
			"stopped first. Its disk image, if it has one, stays (`cabin disk rm`).",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			if _, err := cabinv1.NewVmsClient(conn).RemoveVm(cmd.Context(), &cabinv1.RemoveVmRequest{Name: args[0], OwnerId: g.owner}); err != nil {
				return fmt.Errorf("rm %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		},
	}
}

func newVMPruneCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "prune",
		Example: "  cabin vm prune",
		Short:   "Forget every stopped VM's last run",
		Long:    "prune removes the last runs and logs of every VM of --owner that does not run.",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := cabinv1.NewVmsClient(conn).PruneVms(cmd.Context(), &cabinv1.PruneVmsRequest{OwnerId: g.owner})
			if err != nil {
				return fmt.Errorf("prune: %w", err)
			}
			for _, name := range resp.GetRemoved() {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", name)
			}
			return nil
		},
	}
}

package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newVMLogsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's log",
		Long:  "logs prints the log cabind keeps for the VM NAME (its console and the daemon's\nnotes on it), oldest first.",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVMLogs(cmd, g, args[0])
		},
	}
}

func runVMLogs(cmd *cobra.Command, g *globals, name string) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := concierge.NewVmConciergeClient(conn).GetVmLogs(cmd.Context(), &concierge.GetVmLogsRequest{Name: name, OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("logs of %s: %w", name, err)
	}
	log := resp.GetLog()
	if log != "" && !strings.HasSuffix(log, "\n") {
		// Keep the shell prompt off the last log line.
		log += "\n"
	}
	if _, err := io.WriteString(cmd.OutOrStdout(), log); err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	return nil
}

package main

import (
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func newShellCmd(g *globals) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "shell [-u USER] [-w DIR] [-e K=V] NAME",
		Short: "Open an interactive login shell in a VM",
		Long: "shell runs a login shell (sh -l) in the VM NAME, on a terminal when cabin's\n" +
			"standard input is one, with input passed through: exec -it NAME -- sh -l.",
		Example: "  cabin shell dev\n  cabin shell -u 1000 -w /tmp dev",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := nameArg(cmd, args); err != nil {
				return err
			}
			return o.check()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			o.stdin = true
			f, ok := cmd.InOrStdin().(*os.File)
			o.tty = ok && term.IsTerminal(int(f.Fd()))
			return runExec(cmd, g, args[0], []string{"/bin/sh", "-l"}, o)
		},
	}
	o.processFlags.add(cmd.Flags())
	return cmd
}

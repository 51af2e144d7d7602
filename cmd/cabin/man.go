package main

import (
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/cabinvm/cabin/internal/version"
)

// newManCmd writes a man page per command, generated from the command
// tree, so the pages say what --help says. make man and make install run
// it; it is hidden from users.
func newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "__man DIR",
		Short:  "Write cabin's man pages into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			return doc.GenManTree(root, &doc.GenManHeader{
				Title: "CABIN", Section: "1", Source: "cabin " + version.Version, Manual: "cabin manual",
			}, args[0])
		},
	}
}

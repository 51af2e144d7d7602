package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newVMLogsCmd(g *globals) *cobra.Command {
	var (
		follow bool
		tail   int
	)
	cmd := &cobra.Command{
		Use: "logs NAME [-f] [--tail N]",
		Example: "  cabin vm logs dev\n" +
			"  cabin vm logs -f --tail 20 dev",
		Short: "Print a VM's log",
		Long: "logs prints the log cabind keeps for the VM NAME (its console and the daemon's\n" +
			"notes on it), oldest first, as the guest wrote it. With --tail, only its last\n" +
			"N lines. With -f, it then prints what the VM writes next, until the VM stops\n" +
			"or cabin is interrupted.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &cabinv1.LogsRequest{OwnerId: g.owner, Name: args[0], Follow: follow}
			if cmd.Flags().Changed("tail") {
				if tail < 0 {
					return usagef("--tail must be 0 or more, not %d", tail)
				}
				n := uint32(min(tail, int(^uint32(0))))
				req.TailLines = &n
			}
			return runVMLogs(cmd, g, req)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "then print what the VM writes, until it stops")
	cmd.Flags().IntVar(&tail, "tail", 0, "print only the last `N` lines (default all)")
	return cmd
}

func runVMLogs(cmd *cobra.Command, g *globals, req *cabinv1.LogsRequest) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := cabinv1.NewVmsClient(conn).Logs(cmd.Context(), req)
	if err != nil {
		return fmt.Errorf("logs of %s: %w", req.GetName(), err)
	}
	out := &lineEnd{w: cmd.OutOrStdout()}
	for {
		chunk, err := stream.Recv()
		if err != nil {
			// Keep the shell prompt, or cabin's error, off the last log
			// line.
			if endErr := out.end(); endErr != nil {
				return fmt.Errorf("write log: %w", endErr)
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil && out.wrote && status.Code(err) == codes.Unavailable:
			// Not wrapped, so that report does not blame the socket.
			return fmt.Errorf("logs of %s: the connection was lost: %s", req.GetName(), errorMessage(err))
		case err != nil:
			return fmt.Errorf("logs of %s: %w", req.GetName(), err)
		}
		if _, err := out.Write(chunk.GetData()); err != nil {
			return fmt.Errorf("write log: %w", err)
		}
	}
}

// lineEnd is a writer that can end what it wrote with a newline, if that
// does not end with one already.
type lineEnd struct {
	w     io.Writer
	wrote bool
	last  byte
}

func (l *lineEnd) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if n > 0 {
		l.wrote, l.last = true, p[n-1]
	}
	return n, err
}

func (l *lineEnd) end() error {
	if !l.wrote || l.last == '\n' {
		return nil
	}
	_, err := l.Write([]byte("\n"))
	return err
}

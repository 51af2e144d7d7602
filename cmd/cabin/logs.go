package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
)

// keptBound is what the agent keeps of a container's output, for messages.
const keptBound = "its last 1 to 2 MiB, or what cabin run --log-max-size set"

type logsOptions struct {
	follow, timestamps, asJSON bool
	tail                       string
	vm                         string
}

func newLogsCmd(g *globals) *cobra.Command {
	var o logsOptions
	cmd := &cobra.Command{
		Use:   "logs [-f] [-t] [--tail N] [--vm NAME] [--json] CONTAINER",
		Short: "Show a container's output",
		Long: "logs shows the output the VM's agent kept of a container started with\n" +
			"cabin run -d (" + keptBound + ", both streams, each on cabin's own),\n" +
			"whether or not cabind restarted since. -f then follows what comes until the\n" +
			"container's output ends; --tail N starts with its last N lines (both\n" +
			"streams counted together), --tail 0 with none; -t puts the time the agent\n" +
			"read each line before it. --json prints one JSON object a line instead, a\n" +
			"cabin.v1.ContainerLogsResponse in protojson (data base64).",
		Example: "  cabin logs web\n" +
			"  cabin logs -f --tail 20 -t web",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("%s takes one container, got %d arguments", verb(cmd), len(args))
			}
			if _, err := parseTail(o.tail); err != nil {
				return err
			}
			if err := checkContainerArg(args[0]); err != nil {
				return err
			}
			return checkVMFlag(o.vm)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runLogs(cmd, g, args[0], o)
		},
	}
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "follow the output until the container's ends")
	cmd.Flags().BoolVarP(&o.timestamps, "timestamps", "t", false, "put the time before each line")
	cmd.Flags().StringVar(&o.tail, "tail", "all", "the last N lines only, or all")
	cmd.Flags().StringVar(&o.vm, "vm", "", "the VM the container is in")
	cmd.Flags().BoolVar(&o.asJSON, "json", false, "print JSON lines instead of the output")
	return cmd
}

// parseTail reads --tail: all, or a number of lines; nil for all.
func parseTail(s string) (*int64, error) {
	if s == "all" || s == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return nil, usagef("--tail %q: want a number of lines, or all", s)
	}
	return &n, nil
}

func runLogs(cmd *cobra.Command, g *globals, id string, o logsOptions) error {
	tail, err := parseTail(o.tail)
	if err != nil {
		return err
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()
	vm, err := logsVM(ctx, conn, g, o.vm, id)
	if err != nil {
		return err
	}
	stream, err := containersv1.NewContainersClient(conn).Logs(vmContext(ctx, g, vm),
		&containersv1.ContainerLogsRequest{ContainerId: id, Follow: o.follow, Tail: tail})
	if err != nil {
		return fmt.Errorf("logs of %s in %s: %w", id, vm, err)
	}
	out := &logWriter{w: cmd.OutOrStdout(), timestamps: o.timestamps, atStart: true}
	errOut := &logWriter{w: cmd.ErrOrStderr(), timestamps: o.timestamps, atStart: true}
	for first := true; ; first = false {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if first && status.Code(err) == codes.NotFound {
				// No such container there, or no such VM: worded as
				// the verbs that list first word it.
				if _, lerr := findContainer(ctx, conn, g, o.vm, id); lerr != nil {
					return lerr
				}
			}
			if status.Code(err) == codes.FailedPrecondition {
				return fmt.Errorf("logs of %s in %s: %s (start it with cabin run -d for its output to be kept)", id, vm, errorMessage(err))
			}
			return fmt.Errorf("logs of %s in %s: %w", id, vm, err)
		}
		if o.asJSON {
			b, err := protoJSON(resp)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b); err != nil {
				return err
			}
			continue
		}
		if d := resp.GetDropped(); d > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "cabin: %s of earlier output not kept (the agent keeps %s)\n", formatBytes(d), keptBound)
		}
		w := out
		if resp.GetStream() == containersv1.LogStream_LOG_STREAM_STDERR {
			w = errOut
		}
		if err := w.write(resp.GetTime().AsTime(), resp.GetData()); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
}

// logsVM is the VM to ask for container id's output. Logs finds the
// container by id in the VM its call is relayed to, so no List round trip
// is needed when the VM is known: --vm's, or the caller's one running VM.
// Only with several running VMs and no --vm are their containers listed
// to find the one that has id. A NotFound from Logs itself is worded by
// listing then (runLogs), as the other container verbs word it.
func logsVM(ctx context.Context, conn *grpc.ClientConn, g *globals, vm, id string) (string, error) {
	if vm != "" {
		return vm, nil
	}
	vms, err := runningVMs(ctx, conn, g)
	if err != nil {
		return "", err
	}
	switch len(vms) {
	case 0:
		return "", &errNoContainer{id: id}
	case 1:
		return vms[0], nil
	}
	l, err := listVMContainers(ctx, conn, g, vms, "")
	if err != nil {
		return "", err
	}
	c, err := l.find(id, "")
	if err != nil {
		return "", err
	}
	return c.GetVm(), nil
}

// logWriter writes one stream's output, with -t the time before each line.
type logWriter struct {
	w          io.Writer
	timestamps bool
	atStart    bool
}

func (l *logWriter) write(t time.Time, data []byte) error {
	if !l.timestamps {
		_, err := l.w.Write(data)
		return err
	}
	stamp := t.UTC().Format(time.RFC3339Nano) + " "
	var b bytes.Buffer
	for len(data) > 0 {
		if l.atStart {
			b.WriteString(stamp)
		}
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			b.Write(data)
			l.atStart = false
			break
		}
		b.Write(data[:i+1])
		data = data[i+1:]
		l.atStart = true
	}
	_, err := l.w.Write(b.Bytes())
	return err
}

package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/internal/names"
)

func newPsCmd(g *globals) *cobra.Command {
	var (
		asJSON, all bool
		vm          string
		lf          listFormat
	)
	cmd := &cobra.Command{
		Use:   "ps [-a] [--vm NAME] [--json | -q | --format TEMPLATE]",
		Short: "List the containers in your running VMs",
		Long: "ps lists the containers of every running VM of yours (--vm: of one), asking\n" +
			"each VM's agent: running and paused ones, and with -a also those created and\n" +
			"not started and those that have stopped (until they are removed). With --json\n" +
			"it prints one JSON array of cabin.v1.Container objects in protojson (proto\n" +
			"field names, all fields, enums by name); -q prints the ids only; --format runs\n" +
			"a Go template on each cabin.v1.Container ({{.Id}}, {{.Vm}}, {{.Image}}).\n" +
			"A VM whose agent does not answer is named on standard error; the others are\n" +
			"listed all the same.",
		Example: "  cabin ps\n" +
			"  cabin ps -a --vm dev\n" +
			"  cabin ps -aq | xargs cabin rm -f",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := noArgs(cmd, args); err != nil {
				return err
			}
			if err := checkVMFlag(vm); err != nil {
				return err
			}
			return lf.check(asJSON)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			l, err := listContainers(cmd.Context(), conn, g, vm)
			if err != nil {
				return err
			}
			l.warn(cmd.ErrOrStderr())
			var shown []*containersv1.Container
			for _, c := range l.containers {
				if all || c.GetState() == containersv1.ContainerState_CONTAINER_STATE_RUNNING ||
					c.GetState() == containersv1.ContainerState_CONTAINER_STATE_PAUSED {
					shown = append(shown, c)
				}
			}
			switch {
			case asJSON:
				return writeJSONArray(cmd.OutOrStdout(), shown)
			case lf.set():
				return writeFormatted(cmd.OutOrStdout(), lf, shown, (*containersv1.Container).GetId)
			}
			return writeContainerTable(cmd.OutOrStdout(), shown, time.Now())
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "also containers created and not started, and stopped ones")
	cmd.Flags().StringVar(&vm, "vm", "", "only the containers of this VM")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	lf.add(cmd.Flags())
	return cmd
}

// checkVMFlag checks --vm, which may be empty.
func checkVMFlag(vm string) error {
	if vm == "" {
		return nil
	}
	if err := names.Check("--vm", vm, names.MaxVM); err != nil {
		return usagef("%v", err)
	}
	return nil
}

// writeContainerTable writes ps's table.
func writeContainerTable(w io.Writer, cs []*containersv1.Container, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER ID\tVM\tIMAGE\tCOMMAND\tCREATED\tSTATUS\tPID")
	for _, c := range cs {
		fmt.Fprintln(tw, strings.Join([]string{
			c.GetId(),
			c.GetVm(),
			orDash(c.GetImage()),
			quoteCommand(c.GetCommand()),
			ago(c.GetCreated(), now),
			containerStatus(c, now),
			dash(c.GetPid(), itoa[int32]),
		}, "\t"))
	}
	return tw.Flush()
}

// quoteCommand is a command for a table: quoted, cut at 30 characters.
func quoteCommand(argv []string) string {
	s := strings.Join(argv, " ")
	if r := []rune(s); len(r) > 30 {
		s = string(r[:29]) + "…"
	}
	return fmt.Sprintf("%q", s)
}

// containerStatus is docker's STATUS column: Up 5 minutes, Exited (0) 2
// minutes ago, Created.
func containerStatus(c *containersv1.Container, now time.Time) string {
	switch c.GetState() {
	case containersv1.ContainerState_CONTAINER_STATE_CREATED:
		return "Created"
	case containersv1.ContainerState_CONTAINER_STATE_RUNNING:
		return "Up " + duration(c.GetStarted(), now)
	case containersv1.ContainerState_CONTAINER_STATE_PAUSED:
		return "Up " + duration(c.GetStarted(), now) + " (Paused)"
	case containersv1.ContainerState_CONTAINER_STATE_STOPPED:
		return fmt.Sprintf("Exited (%d) %s", c.GetExitCode(), ago(c.GetFinished(), now))
	}
	return containerState(c.GetState())
}

// ago is how long before now t was, for people: "3 minutes ago".
func ago(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return "-"
	}
	return duration(t, now) + " ago"
}

// duration is how long since t, in docker's words.
func duration(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil {
		return "-"
	}
	d := now.Sub(t.AsTime())
	plural := func(n int, unit string) string {
		if n == 1 {
			return "1 " + unit
		}
		return fmt.Sprintf("%d %ss", n, unit)
	}
	switch {
	case d < time.Second:
		return "Less than a second"
	case d < time.Minute:
		return plural(int(d/time.Second), "second")
	case d < time.Hour:
		return plural(int(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour")
	}
	return plural(int(d/(24*time.Hour)), "day")
}

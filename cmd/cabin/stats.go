package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/kata"
)

// statsInterval is the time between two samples: CPU use is the
// difference of two.
const statsInterval = time.Second

// containerStats is one line of cabin stats, and its JSON.
type containerStats struct {
	ID  string  `json:"id"`
	VM  string  `json:"vm"`
	CPU float64 `json:"cpu_percent"`
	// MemoryUsage excludes the inactive page cache, as docker's does.
	MemoryUsage   uint64  `json:"memory_usage_bytes"`
	MemoryLimit   uint64  `json:"memory_limit_bytes"` // 0: none
	MemoryPercent float64 `json:"memory_percent"`
	NetRx         uint64  `json:"net_rx_bytes"`
	NetTx         uint64  `json:"net_tx_bytes"`
	BlockRead     uint64  `json:"block_read_bytes"`
	BlockWrite    uint64  `json:"block_write_bytes"`
	Pids          uint64  `json:"pids"`
	// cpuTotal and at are the sample's CPU time (ns) and time.
	cpuTotal uint64
	at       time.Time
}

type statsOptions struct {
	noStream, asJSON bool
	vm               string
}

func newStatsCmd(g *globals) *cobra.Command {
	var o statsOptions
	cmd := &cobra.Command{
		Use:   "stats [--no-stream] [--vm NAME] [--json] [CONTAINER...]",
		Short: "Show containers' resource use",
		Long: "stats shows the CPU (percent of one CPU, over the last second), memory (use\n" +
			"without the inactive page cache, limit, percent), network and block I/O and\n" +
			"process count of the running containers named, or of all of them in your\n" +
			"running VMs, as the VMs' agents measure them (Kata's StatsContainer), every\n" +
			"second until interrupted; --no-stream prints one table, from two samples a\n" +
			"second apart. --json prints a JSON array of objects a sample instead (one a\n" +
			"line when streaming).",
		Example: "  cabin stats --no-stream\n" +
			"  cabin stats --json --no-stream web",
		Args: func(cmd *cobra.Command, args []string) error {
			for _, id := range args {
				if err := checkContainerArg(id); err != nil {
					return err
				}
			}
			return checkVMFlag(o.vm)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runStats(cmd, g, args, o)
		},
	}
	// Any number of them, not only the first: addCompletions would see
	// no CONTAINER in the brackets.
	cmd.ValidArgsFunction = completeContainers(g)
	cmd.Flags().BoolVar(&o.noStream, "no-stream", false, "print one sample and exit")
	cmd.Flags().StringVar(&o.vm, "vm", "", "only the containers of this VM")
	cmd.Flags().BoolVar(&o.asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func runStats(cmd *cobra.Command, g *globals, ids []string, o statsOptions) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()
	l, err := listContainers(ctx, conn, g, o.vm)
	if err != nil {
		return err
	}
	var cs []*containersv1.Container
	if len(ids) == 0 {
		l.warn(cmd.ErrOrStderr())
		for _, c := range l.containers {
			if c.GetState() == containersv1.ContainerState_CONTAINER_STATE_RUNNING ||
				c.GetState() == containersv1.ContainerState_CONTAINER_STATE_PAUSED {
				cs = append(cs, c)
			}
		}
	}
	for _, id := range ids {
		c, err := l.find(id, o.vm)
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	prev, err := sampleAll(ctx, conn, g, cs, len(ids) > 0)
	if err != nil {
		return err
	}
	tty := false
	if f, ok := cmd.OutOrStdout().(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	for {
		select {
		case <-time.After(statsInterval):
		case <-ctx.Done():
			return nil
		}
		cur, err := sampleAll(ctx, conn, g, cs, len(ids) > 0)
		if err != nil {
			return err
		}
		rows := cpuPercents(prev, cur)
		if tty && !o.noStream && !o.asJSON {
			// Each table over the last, as docker stats does.
			fmt.Fprint(cmd.OutOrStdout(), "\033[2J\033[H")
		}
		if err := writeStats(cmd.OutOrStdout(), rows, o.asJSON, !o.noStream); err != nil {
			return err
		}
		if o.noStream {
			return nil
		}
		prev = cur
	}
}

// sampleAll samples cs at once. A container that stopped meanwhile is
// left out, unless it was named (strict).
func sampleAll(ctx context.Context, conn *grpc.ClientConn, g *globals, cs []*containersv1.Container, strict bool) ([]*containerStats, error) {
	out := make([]*containerStats, len(cs))
	errs := make([]error, len(cs))
	agent := kata.NewAgentServiceClient(conn)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			resp, err := agent.StatsContainer(vmContext(ctx, g, c.GetVm()), &kata.StatsContainerRequest{ContainerId: c.GetId()})
			if err != nil {
				errs[i] = fmt.Errorf("stats of %s in %s: %w", c.GetId(), c.GetVm(), err)
				return
			}
			out[i] = statsOf(c, resp, time.Now())
		})
	}
	wg.Wait()
	var kept []*containerStats
	for i := range cs {
		if errs[i] != nil {
			if strict {
				return nil, errs[i]
			}
			continue
		}
		kept = append(kept, out[i])
	}
	return kept, nil
}

// statsOf reads one StatsContainer answer.
func statsOf(c *containersv1.Container, r *kata.StatsContainerResponse, at time.Time) *containerStats {
	cg := r.GetCgroupStats()
	s := &containerStats{ID: c.GetId(), VM: c.GetVm(), at: at,
		cpuTotal: cg.GetCpuStats().GetCpuUsage().GetTotalUsage(),
		Pids:     cg.GetPidsStats().GetCurrent(),
	}
	mem := cg.GetMemoryStats()
	s.MemoryUsage = mem.GetUsage().GetUsage()
	if inactive := mem.GetStats()["inactive_file"]; inactive <= s.MemoryUsage {
		s.MemoryUsage -= inactive
	}
	if lim := mem.GetUsage().GetLimit(); lim > 0 && lim < math.MaxInt64 {
		s.MemoryLimit = lim
		s.MemoryPercent = 100 * float64(s.MemoryUsage) / float64(lim)
	}
	for _, n := range r.GetNetworkStats() {
		s.NetRx += n.GetRxBytes()
		s.NetTx += n.GetTxBytes()
	}
	for _, e := range cg.GetBlkioStats().GetIoServiceBytesRecursive() {
		switch strings.ToLower(e.GetOp()) {
		case "read":
			s.BlockRead += e.GetValue()
		case "write":
			s.BlockWrite += e.GetValue()
		}
	}
	return s
}

// cpuPercents fills cur's CPU use from the samples before.
func cpuPercents(prev, cur []*containerStats) []*containerStats {
	before := map[string]*containerStats{}
	for _, p := range prev {
		before[p.VM+"/"+p.ID] = p
	}
	for _, c := range cur {
		p := before[c.VM+"/"+c.ID]
		if p == nil || c.cpuTotal < p.cpuTotal || !c.at.After(p.at) {
			continue
		}
		c.CPU = 100 * float64(c.cpuTotal-p.cpuTotal) / float64(c.at.Sub(p.at).Nanoseconds())
	}
	return cur
}

func writeStats(w io.Writer, rows []*containerStats, asJSON, oneLine bool) error {
	if asJSON {
		if rows == nil {
			rows = []*containerStats{}
		}
		var b []byte
		var err error
		if oneLine {
			b, err = json.Marshal(rows)
		} else {
			b, err = json.MarshalIndent(rows, "", "  ")
		}
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER ID\tVM\tCPU %\tMEM USAGE / LIMIT\tMEM %\tNET I/O\tBLOCK I/O\tPIDS")
	for _, s := range rows {
		limit, pct := "-", "-"
		if s.MemoryLimit > 0 {
			limit, pct = formatBytes(int64(s.MemoryLimit)), fmt.Sprintf("%.2f%%", s.MemoryPercent)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f%%\t%s / %s\t%s\t%s / %s\t%s / %s\t%d\n", s.ID, s.VM, s.CPU,
			formatBytes(int64(s.MemoryUsage)), limit, pct,
			formatBytes(int64(s.NetRx)), formatBytes(int64(s.NetTx)),
			formatBytes(int64(s.BlockRead)), formatBytes(int64(s.BlockWrite)), s.Pids)
	}
	return tw.Flush()
}

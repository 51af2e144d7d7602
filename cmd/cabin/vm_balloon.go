package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/api/concierge"
)

// successFailure is a response that says whether a call worked, and why
// not.
type successFailure interface {
	proto.Message
	GetSuccess() bool
	GetFailureReason() string
}

// balloonFlags are vm balloon's: one action at most, --stats when none.
type balloonFlags struct {
	target     string
	reclaim    bool
	stats      bool
	aggressive string
	timer      string
	pageLimit  int32
	asJSON     bool
}

func newVMBalloonCmd(g *globals) *cobra.Command {
	var f balloonFlags
	cmd := &cobra.Command{
		Use:   "balloon {NAME [--stats | --target SIZE | --reclaim [--page-limit N] | --aggressive on|off] | --timer DURATION} [--json]",
		Short: "Show or move a VM's memory balloon",
		Long: "balloon shows the VM's memory balloon and its guest's free and available\n" +
			"memory (--stats, the default; concierge's GetBalloonInfo), or:\n" +
			"  --target SIZE   puts SIZE of the guest's memory in the balloon (bytes, or\n" +
			"                  with K, M or G), and keeps at least that much there while\n" +
			"                  the balloon timer runs; 0 gives it all back (AdjustVm balloon)\n" +
			"  --reclaim       has the guest drop its caches, then inflates the balloon by\n" +
			"                  what the guest can spare and deflates it again, so the host\n" +
			"                  frees that memory (ReclaimVmMemory; --page-limit bounds it)\n" +
			"  --aggressive    on: inflates every second towards what the guest uses;\n" +
			"                  off: gives back what it took (AggressiveBalloon)\n" +
			"  --timer DURATION  without NAME (root only): every running VM's balloon\n" +
			"                  follows its guest's needs each DURATION, keeping it an\n" +
			"                  eighth of its memory (at least 48 MiB) available; 0 for\n" +
			"                  off (SetBalloonTimer)\n" +
			"--json prints concierge's response.",
		Example: "  cabin vm balloon web\n  cabin vm balloon web --target 256M\n  cabin vm balloon web --reclaim\n  cabin vm balloon --timer 1s",
		Args: func(cmd *cobra.Command, args []string) error {
			if f.timer != "" {
				return noArgs(cmd, args)
			}
			return nameArg(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) > 0 {
				name = args[0]
			}
			return runVMBalloon(cmd, g, name, f)
		},
	}
	cmd.Flags().BoolVar(&f.stats, "stats", false, "show the balloon and the guest's memory (the default)")
	cmd.Flags().StringVar(&f.target, "target", "", "put `SIZE` of the guest's memory in the balloon")
	cmd.Flags().BoolVar(&f.reclaim, "reclaim", false, "take back the memory the guest can do without")
	cmd.Flags().Int32Var(&f.pageLimit, "page-limit", 0, "with --reclaim: at most this many 4 KiB pages (0: no limit)")
	cmd.Flags().StringVar(&f.aggressive, "aggressive", "", "on or off: the aggressive balloon")
	cmd.Flags().StringVar(&f.timer, "timer", "", "every VM's balloon timer `DURATION` (0 for off; root only)")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the response as JSON")
	return cmd
}

func runVMBalloon(cmd *cobra.Command, g *globals, name string, f balloonFlags) error {
	var actions []string
	for _, a := range []struct {
		set  bool
		flag string
	}{{f.stats, "--stats"}, {f.target != "", "--target"}, {f.reclaim, "--reclaim"}, {f.aggressive != "", "--aggressive"}, {f.timer != "", "--timer"}} {
		if a.set {
			actions = append(actions, a.flag)
		}
	}
	if len(actions) > 1 {
		return usagef("%s: one of them at most", strings.Join(actions, ", "))
	}
	if f.pageLimit != 0 && !f.reclaim {
		return usagef("--page-limit goes with --reclaim")
	}
	if f.pageLimit < 0 {
		return usagef("--page-limit %d: want 0 (no limit) or more", f.pageLimit)
	}
	var size uint64
	if f.target != "" {
		var err error
		if size, err = parseSize(f.target); err != nil {
			return err
		}
	}
	var enable bool
	switch f.aggressive {
	case "":
	case "on":
		enable = true
	case "off":
	default:
		return usagef("--aggressive %q: want on or off", f.aggressive)
	}
	var interval time.Duration
	if f.timer != "" {
		var err error
		if interval, err = time.ParseDuration(f.timer); err != nil || interval < 0 {
			return usagef("--timer %q: want a duration such as 1s or 500ms, or 0 for off", f.timer)
		}
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	client := concierge.NewVmConciergeClient(conn)
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	answer := func(what string, resp successFailure, done string) error {
		if f.asJSON {
			if err := writeJSON(out, resp); err != nil {
				return err
			}
		}
		if !resp.GetSuccess() {
			return fmt.Errorf("%s %s: %s", what, name, orUnknown(resp.GetFailureReason()))
		}
		if !f.asJSON {
			fmt.Fprintln(out, done)
		}
		return nil
	}
	switch {
	case f.target != "":
		resp, err := client.AdjustVm(ctx, &concierge.AdjustVmRequest{
			Name: name, OwnerId: g.owner, Operation: "balloon", Params: []string{strconv.FormatUint(size, 10)},
		})
		if err != nil {
			return fmt.Errorf("balloon %s: %w", name, err)
		}
		return answer("balloon", resp, fmt.Sprintf("%s: balloon target %s", name, formatBytes(int64(size))))
	case f.reclaim:
		resp, err := client.ReclaimVmMemory(ctx, &concierge.ReclaimVmMemoryRequest{Name: name, OwnerId: g.owner, PageLimit: f.pageLimit})
		if err != nil {
			return fmt.Errorf("reclaim the memory of %s: %w", name, err)
		}
		return answer("reclaim the memory of", resp, fmt.Sprintf("%s: memory reclaimed", name))
	case f.aggressive != "":
		resp, err := client.AggressiveBalloon(ctx, &concierge.AggressiveBalloonRequest{Name: name, OwnerId: g.owner, Enable: enable})
		if err != nil {
			return fmt.Errorf("aggressive balloon of %s: %w", name, err)
		}
		return answer("aggressive balloon of", resp, fmt.Sprintf("%s: aggressive balloon %s", name, f.aggressive))
	case f.timer != "":
		resp, err := client.SetBalloonTimer(ctx, &concierge.SetBalloonTimerRequest{TimerIntervalMillis: uint64(interval.Milliseconds())})
		if err != nil {
			return fmt.Errorf("balloon timer: %w", err)
		}
		done := "balloon timer off"
		if interval > 0 {
			done = "balloon timer every " + interval.String()
		}
		if f.asJSON {
			return writeJSON(out, resp)
		}
		if !resp.GetSuccess() {
			return fmt.Errorf("balloon timer: %s", orUnknown(resp.GetFailureReason()))
		}
		fmt.Fprintln(out, done)
		return nil
	}
	resp, err := client.GetBalloonInfo(ctx, &concierge.GetBalloonInfoRequest{Name: name, OwnerId: g.owner})
	if err != nil {
		return fmt.Errorf("balloon of %s: %w", name, err)
	}
	if !resp.GetSuccess() {
		if f.asJSON {
			if err := writeJSON(out, resp); err != nil {
				return err
			}
		}
		// Upstream's response has no reason: the VM's state tells most.
		info, err := client.GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: name, OwnerId: g.owner})
		switch {
		case err != nil:
			return fmt.Errorf("balloon of %s: %w", name, err)
		case !info.GetSuccess():
			return fmt.Errorf("no VM named %s", name)
		case info.GetVmInfo().GetStatus() != concierge.VmStatus_VM_STATUS_RUNNING:
			return fmt.Errorf("balloon of %s: the VM is %s", name, statusWord(info.GetVmInfo().GetStatus()))
		}
		return fmt.Errorf("balloon of %s: the guest reports no memory statistics (suspended, or no virtio_balloon driver)", name)
	}
	if f.asJSON {
		return writeJSON(out, resp)
	}
	bi := resp.GetBalloonInfo()
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "balloon\t%s\n", formatBytes(bi.GetBalloonSize()))
	fmt.Fprintf(tw, "available\t%s\n", formatBytes(bi.GetAvailableMemory()))
	fmt.Fprintf(tw, "free\t%s\n", formatBytes(bi.GetFreeMemory()))
	return tw.Flush()
}

// writeVMBalloon adds a running VM's balloon to `cabin vm info`. A VM
// with no statistics to give (starting, suspended, stopping) shows none:
// info shows its state already, and the balloon is no reason to fail.
func writeVMBalloon(cmd *cobra.Command, conn grpc.ClientConnInterface, g *globals, name string) error {
	resp, err := concierge.NewVmConciergeClient(conn).GetBalloonInfo(cmd.Context(), &concierge.GetBalloonInfoRequest{Name: name, OwnerId: g.owner})
	if err != nil || !resp.GetSuccess() {
		return nil
	}
	bi := resp.GetBalloonInfo()
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "\nBALLOON\tAVAILABLE\tFREE")
	fmt.Fprintf(tw, "%s\t%s\t%s\n", formatBytes(bi.GetBalloonSize()), formatBytes(bi.GetAvailableMemory()), formatBytes(bi.GetFreeMemory()))
	return tw.Flush()
}

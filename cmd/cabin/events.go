package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

func newEventsCmd(g *globals) *cobra.Command {
	var (
		asJSON bool
		vmName string
	)
	cmd := &cobra.Command{
		Use: "events [--json] [--vm NAME]",
		Example: "  cabin events\n" +
			"  cabin events --vm dev --json",
		Short: "Follow cabind's events until interrupted",
		Long: "events prints one line per event as cabind sends it: time, kind, VM and\n" +
			"details. With --json each line is instead one JSON object: type (starting_up,\n" +
			"started, stopping, stopped, disk_image_progress, ...), time, vm, owner and\n" +
			"the details, numbers as numbers. Events are not replayed: only those\n" +
			"after the call are shown. --owner and --vm narrow the stream.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEvents(cmd, g, vmName, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as one line of JSON")
	cmd.Flags().StringVar(&vmName, "vm", "", "only events of the VM with this name")
	return cmd
}

func runEvents(cmd *cobra.Command, g *globals, vmName string, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := cabinv1.NewEventsClient(conn).Watch(cmd.Context(), &cabinv1.WatchRequest{OwnerId: g.owner, VmName: vmName})
	if err != nil {
		return fmt.Errorf("watch events: %w", err)
	}
	// cabind answers at once with headers: from then on, the stream
	// failing does not mean cabind could not be reached.
	if _, err := stream.Header(); err != nil {
		return fmt.Errorf("watch events: %w", err)
	}
	out := cmd.OutOrStdout()
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if status.Code(err) == codes.Unavailable {
			// Not wrapped, so that report does not blame the socket.
			return fmt.Errorf("watch events: the connection was lost: %s", errorMessage(err))
		}
		if err != nil {
			return fmt.Errorf("watch events: %w", err)
		}
		var line string
		if asJSON {
			b, err := eventJSON(ev)
			if err != nil {
				return err
			}
			line = string(b)
		} else {
			line = formatEvent(ev, time.Local)
		}
		if _, err := fmt.Fprintln(out, line); err != nil {
			return fmt.Errorf("write event: %w", err)
		}
	}
}

// formatEvent is the human line for one event: time (in loc), kind, VM,
// details, in columns wide enough for the usual values.
func formatEvent(ev *cabinv1.Event, loc *time.Location) string {
	d := describeEvent(ev)
	when := "-"
	if ev.GetTime() != nil {
		when = ev.GetTime().AsTime().In(loc).Format("2006-01-02T15:04:05.000Z07:00")
	}
	vm := d.vm
	if vm == "" {
		vm = "-"
	}
	return strings.TrimRight(fmt.Sprintf("%s  %-20s  %-16s  %s", when, d.kind, vm, d.details), " ")
}

// eventDescription is an event taken apart for people: kind is the oneof
// field's name without its "vm_" prefix; vm and owner name the VM when the
// event is about one; details are key=value words.
type eventDescription struct {
	kind, vm, owner, details string
	// fields are the details, typed, for JSON.
	fields map[string]any
}

func describeEvent(ev *cabinv1.Event) eventDescription {
	var d eventDescription
	var kv []string
	fields := map[string]any{}
	// add records a detail: typed for JSON, as text for people.
	add := func(k string, v any) {
		fields[k] = v
		var text string
		switch v := v.(type) {
		case []string:
			text = strings.Join(v, ",")
		case string:
			text = v
			if k == "failure" || k == "detail" {
				text = strconv.Quote(v)
			}
		default:
			text = fmt.Sprint(v)
			if k == "progress" {
				text += "%"
			}
		}
		kv = append(kv, k+"="+text)
	}
	switch s := ev.GetSignal().(type) {
	case *cabinv1.Event_VmStartingUp:
		d = eventDescription{kind: "starting_up", vm: s.VmStartingUp.GetName(), owner: s.VmStartingUp.GetOwnerId()}
		add("cid", s.VmStartingUp.GetCid())
		if t := s.VmStartingUp.GetVmType(); t != concierge.VmInfo_UNKNOWN {
			add("type", enumWord(t.String(), ""))
		}
	case *cabinv1.Event_VmStarted:
		d = eventDescription{kind: "started", vm: s.VmStarted.GetName(), owner: s.VmStarted.GetOwnerId()}
		info := s.VmStarted.GetVmInfo()
		add("pid", info.GetPid())
		add("cid", info.GetCid())
		if ip := info.GetIpv4Address(); ip != 0 {
			add("ipv4", formatIPv4(ip))
		}
		add("status", statusWord(s.VmStarted.GetStatus()))
	case *cabinv1.Event_VmStopping:
		d = eventDescription{kind: "stopping", vm: s.VmStopping.GetName(), owner: s.VmStopping.GetOwnerId()}
		add("cid", s.VmStopping.GetCid())
	case *cabinv1.Event_VmStopped:
		d = eventDescription{kind: "stopped", vm: s.VmStopped.GetName(), owner: s.VmStopped.GetOwnerId()}
		add("cid", s.VmStopped.GetCid())
		add("reason", enumWord(s.VmStopped.GetReason().String(), ""))
		if detail := ev.GetDetail(); detail != "" {
			add("detail", detail)
		}
	case *cabinv1.Event_DiskImageProgress:
		p := s.DiskImageProgress
		d = eventDescription{kind: "disk_image_progress"}
		add("command", p.GetCommandUuid())
		add("status", enumWord(p.GetStatus().String(), "DISK_STATUS_"))
		add("progress", p.GetProgress())
		if r := p.GetFailureReason(); r != "" {
			add("failure", r)
		}
	case *cabinv1.Event_DnsSettingsChanged:
		d = eventDescription{kind: "dns_settings_changed"}
		add("nameservers", s.DnsSettingsChanged.GetNameservers())
		add("search", s.DnsSettingsChanged.GetSearchDomains())
	case *cabinv1.Event_VmGuestUserlandReady:
		r := s.VmGuestUserlandReady
		d = eventDescription{kind: "guest_userland_ready", vm: r.GetName(), owner: r.GetOwnerId()}
		add("ready", enumWord(r.GetReady().String(), ""))
	case *cabinv1.Event_VmInstallState:
		st := s.VmInstallState
		d = eventDescription{kind: "install_state"}
		add("state", enumWord(st.GetState().String(), ""))
		add("step", enumWord(st.GetInProgressStep().String(), ""))
		add("progress", st.GetInProgressPercent())
		if r := st.GetFailedReason(); r != "" {
			add("failure", r)
		}
	case *cabinv1.Event_VmSwapping:
		d = eventDescription{kind: "swapping", vm: s.VmSwapping.GetName(), owner: s.VmSwapping.GetOwnerId()}
		add("state", enumWord(s.VmSwapping.GetState().String(), ""))
	default:
		// A newer daemon may send kinds this CLI does not know yet.
		d = eventDescription{kind: "unknown"}
	}
	if d.owner != "" {
		kv = append(kv, "owner="+d.owner)
	}
	d.details = strings.Join(kv, " ")
	d.fields = fields
	return d
}

// eventJSON is one line of `cabin events --json`: cabin's own shape, not
// the upstream signal's, with a type, numbers as numbers and the address
// dotted.
func eventJSON(ev *cabinv1.Event) ([]byte, error) {
	d := describeEvent(ev)
	out := map[string]any{"type": d.kind}
	if ev.GetTime() != nil {
		out["time"] = ev.GetTime().AsTime().UTC().Format(time.RFC3339Nano)
	}
	if d.vm != "" {
		out["vm"] = d.vm
	}
	if d.owner != "" {
		out["owner"] = d.owner
	}
	for k, v := range d.fields {
		out[k] = v
	}
	return json.Marshal(out)
}

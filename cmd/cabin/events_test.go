package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

var eventTime = time.Date(2025, 11, 21, 10, 16, 0, 123e6, time.UTC)

func someEvents() []*cabinv1.Event {
	at := timestamppb.New(eventTime)
	return []*cabinv1.Event{
		{Time: at, Signal: &cabinv1.Event_VmStartingUp{VmStartingUp: &concierge.VmStartingUpSignal{Name: "web", Cid: 33}}},
		{Time: at, Signal: &cabinv1.Event_VmStarted{VmStarted: &concierge.VmStartedSignal{Name: "web",
			Status: concierge.VmStatus_VM_STATUS_RUNNING, VmInfo: &concierge.VmInfo{Pid: 4242, Cid: 33, Ipv4Address: webIPv4}}}},
		{Time: at, Signal: &cabinv1.Event_DiskImageProgress{DiskImageProgress: &concierge.DiskImageStatusResponse{
			CommandUuid: "c-1", Status: concierge.DiskImageStatus_DISK_STATUS_IN_PROGRESS, Progress: 40}}},
	}
}

// watchEvents runs cabin events with args, publishes evs once it is
// subscribed, then ends the stream as a daemon going away would.
func watchEvents(t *testing.T, d *fakeDaemon, evs []*cabinv1.Event, args ...string) result {
	t.Helper()
	done := make(chan result, 1)
	go func() { done <- d.run(t, nil, args...) }()
	select {
	case <-d.events.subscribed:
	case r := <-done:
		t.Fatalf("cabin ended before subscribing: %+v", r)
	}
	d.events.publish(evs...)
	d.events.endStreams()
	return <-done
}

func TestEventsLines(t *testing.T) {
	d := startDaemon(t)
	r := watchEvents(t, d, someEvents(), "--owner", "alice", "events", "--vm", "web")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), r.stdout)
	}
	for i, want := range []string{"starting_up", "started", "disk_image_progress"} {
		if f := strings.Fields(lines[i]); len(f) < 3 || f[1] != want {
			t.Errorf("line %d = %q, want kind %s", i, lines[i], want)
		}
	}
	w := d.events.watchRequests()
	if len(w) != 1 || w[0].GetOwnerId() != "alice" || w[0].GetVmName() != "web" {
		t.Errorf("Watch requests = %v", w)
	}
}

// A watch that cabind ends as it stops is reported as that, not as a
// cabind that cannot be reached, though its socket is gone by then.
func TestEventsConnectionLost(t *testing.T) {
	d := startDaemon(t)
	d.events.endErr = status.Error(codes.Unavailable, "cabind is stopping")
	done := make(chan result, 1)
	go func() { done <- d.run(t, nil, "events") }()
	<-d.events.subscribed
	if err := os.Remove(d.socket); err != nil {
		t.Fatal(err)
	}
	d.events.endStreams()
	r := <-done
	if want := "cabin: watch events: the connection was lost: cabind is stopping\n"; r.code != 1 || r.stderr != want {
		t.Errorf("got %+v, want code 1 and stderr %q", r, want)
	}
}

func TestEventsJSON(t *testing.T) {
	d := startDaemon(t)
	evs := someEvents()
	r := watchEvents(t, d, evs, "events", "--json")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != len(evs) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(evs), r.stdout)
	}
	// cabin's own shape: a type, numbers as numbers, the address dotted.
	want := []string{
		`{"cid":33,"time":"2025-11-21T10:16:00.123Z","type":"starting_up","vm":"web"}`,
		`{"cid":33,"ipv4":"100.115.92.26","pid":4242,"status":"running","time":"2025-11-21T10:16:00.123Z","type":"started","vm":"web"}`,
		`{"command":"c-1","progress":40,"status":"in_progress","time":"2025-11-21T10:16:00.123Z","type":"disk_image_progress"}`,
	}
	for i, line := range lines {
		if i < len(want) && line != want[i] {
			t.Errorf("line %d =\n%s\nwant\n%s", i, line, want[i])
		}
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil || obj["type"] == nil {
			t.Errorf("line %d: %v, %s", i, err, line)
		}
	}
}

func TestFormatEvent(t *testing.T) {
	evs := someEvents()
	for i, want := range []string{
		"2025-11-21T10:16:00.123Z  starting_up           web               cid=33",
		"2025-11-21T10:16:00.123Z  started               web               pid=4242 cid=33 ipv4=100.115.92.26 status=running",
		"2025-11-21T10:16:00.123Z  disk_image_progress   -                 command=c-1 status=in_progress progress=40%",
	} {
		if got := formatEvent(evs[i], time.UTC); got != want {
			t.Errorf("formatEvent(%d) =\n%q\nwant\n%q", i, got, want)
		}
	}
}

func TestDescribeEvent(t *testing.T) {
	for _, tc := range []struct {
		ev   *cabinv1.Event
		want eventDescription
	}{
		{&cabinv1.Event{Signal: &cabinv1.Event_VmStopped{VmStopped: &concierge.VmStoppedSignal{
			Name: "web", OwnerId: "alice", Cid: 33, Reason: concierge.VmStopReason_STOP_VM_REQUESTED}}},
			eventDescription{kind: "stopped", vm: "web", owner: "alice", details: "cid=33 reason=stop_vm_requested owner=alice"}},
		{&cabinv1.Event{Signal: &cabinv1.Event_VmStopping{VmStopping: &concierge.VmStoppingSignal{Name: "web", Cid: 33}}},
			eventDescription{kind: "stopping", vm: "web", details: "cid=33"}},
		{&cabinv1.Event{Signal: &cabinv1.Event_DnsSettingsChanged{DnsSettingsChanged: &concierge.DnsSettings{
			Nameservers: []string{"1.1.1.1", "9.9.9.9"}, SearchDomains: []string{"lan"}}}},
			eventDescription{kind: "dns_settings_changed", details: "nameservers=1.1.1.1,9.9.9.9 search=lan"}},
		{&cabinv1.Event{Signal: &cabinv1.Event_VmSwapping{VmSwapping: &concierge.VmSwappingSignal{
			Name: "web", State: concierge.SwappingState_SWAPPING_IN}}},
			eventDescription{kind: "swapping", vm: "web", details: "state=swapping_in"}},
		{&cabinv1.Event{}, eventDescription{kind: "unknown"}},
	} {
		got := describeEvent(tc.ev)
		if got.kind != tc.want.kind || got.vm != tc.want.vm || got.owner != tc.want.owner || got.details != tc.want.details {
			t.Errorf("describeEvent(%v) = %+v, want %+v", tc.ev, got, tc.want)
		}
	}
}

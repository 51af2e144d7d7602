package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu/qemutest"
)

const testRAM = 512 << 20

// balloonPeer is a fake QEMU with a balloon: handle answers each command
// (a JSON "return" value, or "" for the default answer) and every command
// is recorded.
type balloonPeer struct {
	mu   sync.Mutex
	cmds []fakeRequest
}

func (p *balloonPeer) commands() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, r := range p.cmds {
		s := r.Execute
		if r.Arguments != nil {
			s += " " + string(r.Arguments)
		}
		out = append(out, s)
	}
	return out
}

// balloonVM returns a vm whose monitor is a fake peer answering with
// handle; query-memory-size-summary and query-balloon have defaults.
func balloonVM(t *testing.T, handle func(r fakeRequest) string) (*vm, *balloonPeer) {
	t.Helper()
	p := &balloonPeer{}
	c := connect(t, func(f *fakeQMP) error {
		for {
			r, err := f.recv()
			if err != nil {
				return err
			}
			p.mu.Lock()
			p.cmds = append(p.cmds, r)
			p.mu.Unlock()
			ret := handle(r)
			if ret == "" {
				switch r.Execute {
				case "query-memory-size-summary":
					ret = fmt.Sprintf(`{"base-memory": %d, "plugged-memory": 0}`, testRAM)
				case "query-balloon":
					ret = fmt.Sprintf(`{"actual": %d}`, testRAM-(64<<20))
				default:
					ret = "{}"
				}
			}
			if strings.HasPrefix(ret, "error:") {
				err = f.send(fmt.Sprintf(`{"error": {"class": "GenericError", "desc": %q}, "id": %s}`, ret[6:], r.ID))
			} else {
				err = f.reply(r, ret)
			}
			if err != nil {
				return err
			}
		}
	})
	return &vm{qmp: c, log: slog.New(slog.DiscardHandler)}, p
}

func statsJSON(updated int64) string {
	return fmt.Sprintf(`{"stats": {"stat-swap-out": 0, "stat-available-memory": 402653184, "stat-free-memory": 335544320,
		"stat-minor-faults": 1000, "stat-major-faults": 3, "stat-total-memory": 503316480, "stat-swap-in": 0,
		"stat-disk-caches": 50331648, "stat-htlb-pgalloc": 0, "stat-htlb-pgfail": 0}, "last-update": %d}`, updated)
}

func TestBalloonDeviceOnEveryMachine(t *testing.T) {
	for _, tc := range []struct {
		machine hypervisor.Machine
		want    string
	}{
		{hypervisor.MachineMicroVM, "virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on"},
		{hypervisor.MachineQ35, "virtio-balloon-pci,id=balloon0,deflate-on-oom=on,free-page-reporting=on"},
	} {
		cfg := baseConfig()
		cfg.Machine = tc.machine
		args, err := Cmdline(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var devs []string
		for i, a := range args {
			if a == "-device" && strings.Contains(args[i+1], "balloon") {
				devs = append(devs, args[i+1])
			}
		}
		if !slices.Equal(devs, []string{tc.want}) {
			t.Errorf("%s: balloon devices %q, want [%q]", tc.machine, devs, tc.want)
		}
	}
}

// The target QEMU takes is the memory the guest keeps; the RAM is asked
// once.
func TestSetBalloon(t *testing.T) {
	v, p := balloonVM(t, func(fakeRequest) string { return "" })
	ctx := testContext(t)
	if err := v.SetBalloon(ctx, 100<<20); err != nil {
		t.Fatal(err)
	}
	if err := v.SetBalloon(ctx, 0); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"query-memory-size-summary",
		fmt.Sprintf(`balloon {"value":%d}`, testRAM-(100<<20)),
		fmt.Sprintf(`balloon {"value":%d}`, testRAM),
	}
	if got := p.commands(); !slices.Equal(got, want) {
		t.Errorf("commands\n got %q\nwant %q", got, want)
	}
}

func TestSetBalloonRefusesBadSizes(t *testing.T) {
	v, p := balloonVM(t, func(fakeRequest) string { return "" })
	for _, size := range []int64{-1, testRAM, testRAM + 1, 1 << 62} {
		err := v.SetBalloon(testContext(t), size)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "size") {
			t.Errorf("SetBalloon(%d) = %v, want invalid argument naming size", size, err)
		}
	}
	for _, c := range p.commands() {
		if strings.HasPrefix(c, "balloon") {
			t.Errorf("a refused size reached QEMU: %s", c)
		}
	}
}

func TestBalloonWithoutMonitor(t *testing.T) {
	v := &vm{log: slog.New(slog.DiscardHandler)}
	if err := v.SetBalloon(testContext(t), 0); !errors.Is(err, hypervisor.ErrNotConnected) {
		t.Errorf("SetBalloon = %v, want ErrNotConnected", err)
	}
	if _, err := v.BalloonStats(testContext(t), time.Now().Add(-2*time.Second)); !errors.Is(err, hypervisor.ErrNotConnected) {
		t.Errorf("BalloonStats = %v, want ErrNotConnected", err)
	}
}

func TestBalloonQEMUError(t *testing.T) {
	v, _ := balloonVM(t, func(r fakeRequest) string {
		if r.Execute == "balloon" {
			return "error:No balloon device has been activated"
		}
		return ""
	})
	err := v.SetBalloon(testContext(t), 1<<20)
	var qe *QMPError
	if !errors.As(err, &qe) || !strings.Contains(err.Error(), "No balloon device") {
		t.Errorf("SetBalloon = %v, want QEMU's error", err)
	}
}

// Statistics the guest reported this second are used as they are: the
// guest is not woken.
func TestBalloonStatsFresh(t *testing.T) {
	now := time.Now().Unix()
	v, p := balloonVM(t, func(r fakeRequest) string {
		if r.Execute == "qom-get" {
			return statsJSON(now)
		}
		return ""
	})
	st, err := v.BalloonStats(testContext(t), time.Now().Add(-2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := hypervisor.BalloonStats{
		Memory: testRAM, Size: 64 << 20, Total: 503316480, Free: 335544320, Available: 402653184,
		Caches: 50331648, SwapIn: 0, SwapOut: 0, MajorFaults: 3, MinorFaults: 1000, Updated: time.Unix(now, 0),
	}
	if st != want {
		t.Errorf("stats\n got %+v\nwant %+v", st, want)
	}
	for _, c := range p.commands() {
		if strings.HasPrefix(c, "qom-set") {
			t.Errorf("fresh stats asked the guest again: %s", c)
		}
	}
	if got := p.commands(); !slices.Contains(got, `qom-get {"path":"/machine/peripheral/balloon0","property":"guest-stats"}`) {
		t.Errorf("commands %q: no qom-get of the balloon's guest-stats", got)
	}
}

// Old statistics: polling is switched on (off first, so that QEMU asks
// at once), the new report awaited, and polling switched off again.
func TestBalloonStatsAsksTheGuest(t *testing.T) {
	var mu sync.Mutex
	asked, gets := false, 0
	v, p := balloonVM(t, func(r fakeRequest) string {
		mu.Lock()
		defer mu.Unlock()
		switch r.Execute {
		case "qom-set":
			if strings.Contains(string(r.Arguments), `"value":1`) {
				asked = true
			}
		case "qom-get":
			gets++
			// The guest answers on the second look after being asked.
			if asked && gets > 2 {
				return statsJSON(time.Now().Unix())
			}
			return statsJSON(1000)
		}
		return ""
	})
	st, err := v.BalloonStats(testContext(t), time.Now().Add(-2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st.Updated.Unix() < time.Now().Unix()-1 {
		t.Errorf("stats updated %v: old", st.Updated)
	}
	const poll = `qom-set {"path":"/machine/peripheral/balloon0","property":"guest-stats-polling-interval","value":%d}`
	var sets []string
	for _, c := range p.commands() {
		if strings.HasPrefix(c, "qom-set") {
			sets = append(sets, c)
		}
	}
	want := []string{fmt.Sprintf(poll, 0), fmt.Sprintf(poll, 1), fmt.Sprintf(poll, 0)}
	if !slices.Equal(sets, want) {
		t.Errorf("polling set\n got %q\nwant %q", sets, want)
	}
	if got := p.commands(); got[len(got)-1] != "query-balloon" {
		t.Errorf("last command %q, want query-balloon", got[len(got)-1])
	}
}

// A guest that never answers: the call fails as unavailable, and polling
// is switched off all the same; so it is when the caller gives up.
func TestBalloonStatsSilentGuest(t *testing.T) {
	v, p := balloonVM(t, func(r fakeRequest) string {
		if r.Execute == "qom-get" {
			return statsJSON(0)
		}
		return ""
	})
	v.balloon.wait = 100 * time.Millisecond
	_, err := v.BalloonStats(testContext(t), time.Now().Add(-2*time.Second))
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "virtio_balloon") {
		t.Fatalf("BalloonStats = %v, want unavailable", err)
	}
	v.balloon.wait = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if _, err := v.BalloonStats(ctx, time.Now().Add(-2*time.Second)); !errors.Is(err, context.Canceled) {
		t.Fatalf("BalloonStats = %v, want canceled", err)
	}
	got := p.commands()
	const off = `qom-set {"path":"/machine/peripheral/balloon0","property":"guest-stats-polling-interval","value":0}`
	if got[len(got)-1] != off {
		t.Errorf("last command %q, want polling off", got[len(got)-1])
	}
}

func TestParseGuestStats(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     hypervisor.BalloonStats
		err      bool
	}{
		{"unreported is -1", `{"stats": {"stat-free-memory": 18446744073709551615, "stat-total-memory": 1024}, "last-update": 0}`,
			hypervisor.BalloonStats{Total: 1024, Free: -1, Available: -1, Caches: -1, SwapIn: -1, SwapOut: -1, MajorFaults: -1, MinorFaults: -1}, false},
		{"negative and fractional are not counts", `{"stats": {"stat-free-memory": -5, "stat-total-memory": 1.5}, "last-update": 7}`,
			hypervisor.BalloonStats{Total: -1, Free: -1, Available: -1, Caches: -1, SwapIn: -1, SwapOut: -1, MajorFaults: -1, MinorFaults: -1, Updated: time.Unix(7, 0)}, false},
		{"absurd last-update", `{"stats": {}, "last-update": 9223372036854775807}`,
			hypervisor.BalloonStats{Total: -1, Free: -1, Available: -1, Caches: -1, SwapIn: -1, SwapOut: -1, MajorFaults: -1, MinorFaults: -1}, false},
		{"not an object", `[1]`, hypervisor.BalloonStats{}, true},
		{"stats not numbers", `{"stats": {"stat-free-memory": "x"}}`, hypervisor.BalloonStats{}, true},
	} {
		got, err := parseGuestStats([]byte(tc.in))
		if (err != nil) != tc.err {
			t.Errorf("%s: err = %v, want error %v", tc.name, err, tc.err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

// FuzzGuestStats feeds the parser what QEMU relays from the guest: it
// must never panic, and what it accepts has no negative statistic but
// the -1 of an unreported one.
func FuzzGuestStats(f *testing.F) {
	f.Add([]byte(statsJSON(1700000000)))
	f.Add([]byte(`{"stats": {"stat-free-memory": 18446744073709551615}, "last-update": 0}`))
	f.Add([]byte(`{"stats": null, "last-update": -1}`))
	f.Add([]byte(`{"stats": {"stat-total-memory": 1e30}, "last-update": 1e300}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseGuestStats(b)
		if err != nil {
			return
		}
		for _, v := range []int64{st.Total, st.Free, st.Available, st.Caches, st.SwapIn, st.SwapOut, st.MajorFaults, st.MinorFaults} {
			if v < -1 {
				t.Fatalf("statistic %d from %q", v, b)
			}
		}
		if !st.Updated.IsZero() && st.Updated.Unix() <= 0 {
			t.Fatalf("updated %v from %q", st.Updated, b)
		}
		if _, err := json.Marshal(st); err != nil {
			t.Fatal(err)
		}
	})
}

// Against a real QEMU whose guest has no balloon driver: the device,
// its QOM path and properties are there, a target is taken, the balloon
// stays empty, and the stats never come.
func TestBalloonRealQEMU(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	dir := vmDir(t)
	for _, machine := range []hypervisor.Machine{hypervisor.MachineMicroVM, hypervisor.MachineQ35} {
		cfg := haltConfig(t, dir)
		cfg.Machine = machine
		v := launch(t, testLauncher(t), cfg)
		ctx := testCtx(t)
		if err := v.SetBalloon(ctx, 16<<20); err != nil {
			t.Fatalf("%s: SetBalloon: %v", machine, err)
		}
		if err := v.SetBalloon(ctx, 64<<20); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: a balloon of all the guest's 64 MiB: %v", machine, err)
		}
		if size, err := v.BalloonSize(ctx); err != nil || size != 0 {
			t.Errorf("%s: BalloonSize = %d, %v; want 0 from a guest without a driver", machine, size, err)
		}
		v.balloon.wait = 300 * time.Millisecond
		if _, err := v.BalloonStats(ctx, time.Now()); !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("%s: BalloonStats = %v, want unavailable", machine, err)
		}
		// The polling is off again: the property reads 0.
		qmp, _ := v.monitor()
		var interval int
		if err := qmp.Execute(ctx, "qom-get", map[string]string{"path": balloonPath, "property": "guest-stats-polling-interval"}, &interval); err != nil || interval != 0 {
			t.Errorf("%s: polling interval %d, %v; want 0", machine, interval, err)
		}
		if err := v.Quit(ctx); err != nil {
			t.Fatal(err)
		}
		v.Close()
	}
}

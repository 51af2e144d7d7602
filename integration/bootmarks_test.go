package integration

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/bootcfg"
)

// TestBootMarks reads the shared VM's kernel log as the bench's boot
// phases do: the agent has written its boot marks there, each once, in
// the order its start-up reaches them, all after the kernel ran /init.
func TestBootMarks(t *testing.T) {
	e := needEnv(t)
	out := mustExec(t, e, e.shared.name, "dmesg")
	var initAt time.Duration
	at := map[string]time.Duration{}
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(line, "[")
		if !ok {
			continue
		}
		ts, msg, ok := strings.Cut(rest, "] ")
		if !ok {
			continue
		}
		secs, err := strconv.ParseFloat(strings.TrimSpace(ts), 64)
		if err != nil {
			continue
		}
		when := time.Duration(secs * float64(time.Second))
		if strings.HasPrefix(msg, "Run /init as init process") {
			initAt = when
		}
		marks, ok, err := bootcfg.ParseBootMarks(msg)
		if err != nil {
			t.Fatalf("kernel log line %q: %v", line, err)
		}
		for name, off := range marks {
			if _, dup := at[name]; dup && ok {
				t.Errorf("mark %s written twice", name)
			}
			at[name] = when + off
		}
	}
	if initAt == 0 {
		t.Fatalf("no \"Run /init\" line in the kernel log:\n%s", out)
	}
	prev, prevName := initAt, "run /init"
	for _, name := range []string{bootcfg.MarkMain, bootcfg.MarkSetup, bootcfg.MarkModules, bootcfg.MarkPorts, bootcfg.MarkReady} {
		t2, ok := at[name]
		if !ok {
			t.Errorf("mark %s missing from the kernel log", name)
			continue
		}
		// The marks are rounded to the microsecond, the kernel's clock
		// and the agent's are two clocks: allow a millisecond.
		if t2 < prev-time.Millisecond {
			t.Errorf("mark %s at %v, before %s at %v", name, t2, prevName, prev)
		}
		prev, prevName = t2, name
	}
}

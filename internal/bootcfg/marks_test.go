package bootcfg

import (
	"strings"
	"testing"
	"time"
)

func TestBootMarksRoundTrip(t *testing.T) {
	now := time.Date(2026, 12, 7, 7, 0, 0, 0, time.UTC)
	line, err := FormatBootMarks([]BootMark{
		{Name: MarkMain, At: now.Add(-41250 * time.Microsecond)},
		{Name: MarkPorts, At: now},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	if want := "cabin-agent: boot main=-41.250 ports=0.000"; line != want {
		t.Fatalf("line %q, want %q", line, want)
	}
	marks, ok, err := ParseBootMarks(line)
	if err != nil || !ok {
		t.Fatalf("parse: ok %v err %v", ok, err)
	}
	if marks[MarkMain] != -41250*time.Microsecond || marks[MarkPorts] != 0 || len(marks) != 2 {
		t.Fatalf("marks %v", marks)
	}
}

func TestFormatBootMarksRefusesBadName(t *testing.T) {
	for _, name := range []string{"", "Main", "a b", "a=b", strings.Repeat("a", 17), "ready\n"} {
		if _, err := FormatBootMarks([]BootMark{{Name: name}}, time.Now()); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
}

func TestParseBootMarks(t *testing.T) {
	for _, c := range []struct {
		msg      string
		ok, fail bool
	}{
		{msg: "Run /init as init process"},
		{msg: "cabin-agent: booted"},
		{msg: "cabin-agent: boot ready=-0.5", ok: true},
		{msg: "cabin-agent: boot", ok: true, fail: true},
		{msg: "cabin-agent: boot ready", ok: true, fail: true},
		{msg: "cabin-agent: boot ready=x", ok: true, fail: true},
		{msg: "cabin-agent: boot ready=NaN", ok: true, fail: true},
		{msg: "cabin-agent: boot ready=-Inf", ok: true, fail: true},
		{msg: "cabin-agent: boot ready=1e300", ok: true, fail: true},
		{msg: "cabin-agent: boot ready=1 ready=2", ok: true, fail: true},
		{msg: "cabin-agent: boot Ready=1", ok: true, fail: true},
	} {
		marks, ok, err := ParseBootMarks(c.msg)
		if ok != c.ok || (err != nil) != c.fail {
			t.Errorf("%q: ok %v err %v", c.msg, ok, err)
		}
		if err == nil && ok && len(marks) == 0 {
			t.Errorf("%q: no marks", c.msg)
		}
	}
}

// FuzzParseBootMarks reads arbitrary kernel log messages as the bench
// does: a boot mark line it accepts has marks of valid names within the
// bounds, which format back to a line that parses to the same marks
// (to the microsecond).
func FuzzParseBootMarks(f *testing.F) {
	for _, s := range []string{"", "cabin-agent: boot main=-41.250 ports=0.000", "cabin-agent: boot ready=1e9",
		"cabin-agent: boot a=1 a=2", "cabin-agent: bootx=1", "cabin-agent: boot  x=0x10", "cabin-agent: boot x=+.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		marks, ok, err := ParseBootMarks(msg)
		if err != nil || !ok {
			return
		}
		now := time.Now()
		var ms []BootMark
		for name, d := range marks {
			if d > maxMarkOffset || d < -maxMarkOffset {
				t.Fatalf("%q: offset %v out of bounds", msg, d)
			}
			ms = append(ms, BootMark{Name: name, At: now.Add(d)})
		}
		line, err := FormatBootMarks(ms, now)
		if err != nil {
			t.Fatalf("%q: marks %v do not format: %v", msg, marks, err)
		}
		again, ok, err := ParseBootMarks(line)
		if err != nil || !ok || len(again) != len(marks) {
			t.Fatalf("%q → %q: %v %v %v", msg, line, again, ok, err)
		}
		for name, d := range marks {
			if diff := again[name] - d; diff > time.Microsecond || diff < -time.Microsecond {
				t.Fatalf("%q → %q: %s %v, then %v", msg, line, name, d, again[name])
			}
		}
	})
}

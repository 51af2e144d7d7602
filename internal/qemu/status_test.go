package qemu

import (
	"testing"

	"github.com/cabinvm/cabin/internal/qemu/qemutest"
)

func TestParseStatus(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    Status
		wantErr bool
	}{
		{in: `{"status":"running","singlestep":false,"running":true}`, want: Status{Running: true, Status: "running"}},
		{in: `{"status":"paused","running":false}`, want: Status{Status: "paused"}},
		{in: `{"status":"prelaunch","running":false}`, want: Status{Status: "prelaunch"}},
		{in: `{"status":"paused"}`, wantErr: true},
		{in: `{"running":false}`, wantErr: true},
		{in: `{"running":"no","status":"paused"}`, wantErr: true},
		{in: `[]`, wantErr: true},
		{in: `null`, wantErr: true},
		{in: ``, wantErr: true},
	} {
		got, err := ParseStatus([]byte(c.in))
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("ParseStatus(%s) = %+v, %v; want %+v, error %v", c.in, got, err, c.want, c.wantErr)
		}
	}
}

func FuzzParseStatus(f *testing.F) {
	for _, s := range []string{`{"status":"running","running":true}`, `{"status":"paused","running":false}`, `{}`, `null`, `{"running":true,"status":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStatus(b)
		if err != nil && st != (Status{}) {
			t.Fatalf("error %v with a status %+v", err, st)
		}
	})
}

// A real QEMU: Pause stops the vCPUs and Paused says so, twice over;
// Resume runs them again.
func TestPauseResume(t *testing.T) {
	qemutest.SkipWithoutQEMU(t)
	v := launch(t, testLauncher(t), haltConfig(t, vmDir(t)))
	ctx := testCtx(t)
	if paused, err := v.Paused(ctx); err != nil || !paused {
		t.Fatalf("launched VM: Paused = %v, %v; want true (launched with -S)", paused, err)
	}
	if err := v.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if paused, err := v.Paused(ctx); err != nil || paused {
		t.Fatalf("after Resume: Paused = %v, %v; want false", paused, err)
	}
	for i := 0; i < 2; i++ {
		if err := v.Pause(ctx); err != nil {
			t.Fatalf("Pause #%d: %v", i+1, err)
		}
		if s := queryStatus(t, v); s != "paused" {
			t.Errorf("status after Pause #%d %q, want paused", i+1, s)
		}
	}
	if paused, err := v.Paused(ctx); err != nil || !paused {
		t.Fatalf("after Pause: Paused = %v, %v; want true", paused, err)
	}
	if err := v.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if s := queryStatus(t, v); s != "running" {
		t.Errorf("status after Resume %q, want running", s)
	}
	// Without a monitor, both refuse rather than guess.
	v.Close()
	if err := v.Pause(ctx); err == nil {
		t.Error("Pause after Close succeeded")
	}
	if _, err := v.Paused(ctx); err == nil {
		t.Error("Paused after Close succeeded")
	}
}

package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/vmm"
)

// The balloon verbs over the real concierge edge and fake VMs.
func TestVMBalloon(t *testing.T) {
	e, sock := conciergeOverFakes(t, nil)
	key := vmm.Key{Name: "web"}
	e.Start(t, vmm.Spec{Key: key, MemoryMiB: 512})
	e.SetGuestMemory(t, key, 100<<20, 50<<20)

	r := runCLI(t, nil, "--socket", sock, "vm", "balloon", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "balloon    0 B") || !strings.Contains(r.stdout, "available  412 MiB") || !strings.Contains(r.stdout, "free       362 MiB") {
		t.Fatalf("stats: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "web", "--target", "100M")
	if r.code != 0 || r.stdout != "web: balloon target 100 MiB\n" {
		t.Fatalf("target: %+v", r)
	}
	if b := e.Balloon(t, key); b.Target != 100<<20 {
		t.Errorf("balloon target %d", b.Target)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "web", "--stats", "--json")
	var stats struct {
		Success     bool `json:"success"`
		BalloonInfo struct {
			BalloonSize string `json:"balloon_size"`
		} `json:"balloon_info"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &stats) != nil || !stats.Success || stats.BalloonInfo.BalloonSize != "104857600" {
		t.Fatalf("stats --json: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "web", "--reclaim")
	if r.code != 0 || r.stdout != "web: memory reclaimed\n" {
		t.Fatalf("reclaim: %+v", r)
	}
	if b := e.Balloon(t, key); b.Drops != 1 {
		t.Errorf("reclaim dropped the guest's caches %d times", b.Drops)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "web", "--aggressive", "off")
	if r.code != 0 || r.stdout != "web: aggressive balloon off\n" {
		t.Fatalf("aggressive off: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "--timer", "2s")
	if r.code != 0 || r.stdout != "balloon timer every 2s\n" || e.M.BalloonTimer().String() != "2s" {
		t.Fatalf("timer: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "--timer", "0")
	if r.code != 0 || r.stdout != "balloon timer off\n" || e.M.BalloonTimer() != 0 {
		t.Fatalf("timer off: %+v", r)
	}

	// Bad input: usage errors before any call, the daemon's refusals
	// after.
	for _, args := range [][]string{
		{"web", "--target", "lots"},
		{"web", "--target", "1M", "--reclaim"},
		{"web", "--aggressive", "maybe"},
		{"web", "--page-limit", "5"},
		{"web", "--reclaim", "--page-limit", "-1"},
		{"--timer", "soon"},
		{"web", "--timer", "1s"},
		{},
	} {
		r := runCLI(t, nil, append([]string{"--socket", sock, "vm", "balloon"}, args...)...)
		if r.code != 2 {
			t.Errorf("balloon %q: %+v, want a usage error", args, r)
		}
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "web", "--target", "1G")
	if r.code == 0 || !strings.Contains(r.stderr, "params[0]") {
		t.Errorf("a target above the guest's memory: %+v", r)
	}
	if b := e.Balloon(t, key); b.Target != 100<<20 {
		t.Errorf("a refused target moved the balloon to %d", b.Target)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "nope")
	if r.code == 0 || !strings.Contains(r.stderr, "no VM named nope") {
		t.Errorf("stats of a VM that is not there: %+v", r)
	}
	e.SetBalloonSilent(t, key, true)
	r = runCLI(t, nil, "--socket", sock, "vm", "balloon", "web")
	if r.code == 0 || !strings.Contains(r.stderr, "no memory statistics") {
		t.Errorf("stats of a silent guest: %+v", r)
	}
}

func TestVMAdjust(t *testing.T) {
	e, sock := conciergeOverFakes(t, nil)
	key := vmm.Key{Name: "web"}
	e.Start(t, vmm.Spec{Key: key, MemoryMiB: 512})
	r := runCLI(t, nil, "--socket", sock, "vm", "adjust", "web", "memsize", "256")
	if r.code != 0 || r.stdout != "web: memsize 256\n" {
		t.Fatalf("memsize: %+v", r)
	}
	if b := e.Balloon(t, key); b.Target != 256<<20 {
		t.Errorf("balloon target %d MiB after memsize 256", b.Target>>20)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "adjust", "web", "rename", "other", "--json")
	if r.code == 0 || !strings.Contains(r.stdout, `"success": false`) || !strings.Contains(r.stderr, "Plugin VM") {
		t.Errorf("rename: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "adjust", "web", "frobnicate")
	if r.code == 0 || !strings.Contains(r.stderr, "unrecognized operation") {
		t.Errorf("unknown operation: %+v", r)
	}
	r = runCLI(t, nil, "--socket", sock, "vm", "adjust", "web", "memsize", "9999")
	if r.code == 0 || !strings.Contains(r.stderr, "params[0]") {
		t.Errorf("memsize above the VM's memory: %+v", r)
	}
	if r := runCLI(t, nil, "--socket", sock, "vm", "adjust", "web"); r.code != 2 {
		t.Errorf("no operation: %+v", r)
	}
}

package main

import (
	"strings"
	"testing"
	"time"
)

// A boot's kernel log as busybox's dmesg prints it in a guest (the image's
// Debian kernel under TCG, lines between the phase ends left out), with
// the agent's boot marks and the bench's clock sync line.
const sampleDmesg = `[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)
[    0.000000] Command line: console=ttyS0 quiet loglevel=0 panic=-1
[    0.088481] Kernel command line: console=ttyS0 quiet loglevel=0 panic=-1
[    0.335032] Calibrating delay loop (skipped), value calculated using timer frequency.. 4000.00 BogoMIPS (lpj=8000000)
[    0.338594] Freeing SMP alternatives memory: 36K
[    0.805878] Trying to unpack rootfs image as initramfs...
[    1.124885] Freeing initrd memory: 30660K
[    1.443484] Freeing unused kernel image (initmem) memory: 2824K
[    1.443892] Write protecting the kernel read-only data: 26624k
[    1.636265] x86/mm: Checked W+X mappings: passed, no W+X pages found.
[    1.636924] Run /init as init process
[    1.636930]   with arguments:
               continued without a timestamp
[    2.100000] cabin-agent: boot main=-250.000 setup=-100.000 modules=-40.000 ports=0.000
[    2.300000] cabin-agent: boot ready=-10.000
[    2.500000] cabin-bench: clock sync
`

func TestSplitBoot(t *testing.T) {
	lines := parseDmesg([]byte(sampleDmesg))
	if len(lines) != 15 {
		t.Fatalf("%d lines, want 15 (the continuation skipped)", len(lines))
	}
	phases, ports, err := splitBoot(lines)
	if err != nil {
		t.Fatal(err)
	}
	if ports != 2100*time.Millisecond {
		t.Errorf("ports at %v, want 2.1s", ports)
	}
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	want := map[string]time.Duration{
		"kernel: vCPU runs → command line parsed":            ms(88.481),
		"kernel: memory, IRQs, timers, APIC calibration":     ms(335.032 - 88.481),
		"kernel: code patching (alternatives)":               ms(338.594 - 335.032),
		"kernel: initcalls to the initramfs":                 ms(805.878 - 338.594),
		"kernel: initramfs unpacked (async, with initcalls)": ms(1124.885 - 805.878),
		"kernel: initcalls after":                            ms(1443.484 - 1124.885),
		"kernel: W+X page check":                             ms(1636.265 - 1443.484),
		"kernel: → run /init":                                ms(1636.924 - 1636.265),
		"agent: Go runtime and package init → main":          ms(1850 - 1636.924),
		"agent: mounts, cgroups":                             ms(150),
		"agent: boot modules":                                ms(60),
		"agent: ports open":                                  ms(40),
		"agent: VmReady acknowledged":                        ms(190),
	}
	for name, w := range want {
		if d := phases[name] - w; d > time.Microsecond || d < -time.Microsecond {
			t.Errorf("%s: %v, want %v", name, phases[name], w)
		}
	}
	if len(phases) != len(want) {
		t.Errorf("%d phases, want %d: %v", len(phases), len(want), phases)
	}
	if at, err := syncAt(lines); err != nil || at != 2500*time.Millisecond {
		t.Errorf("sync at %v, %v", at, err)
	}
}

// A kernel that prints no W+X check (cabin's own has none) gives its time
// to the next phase rather than failing.
func TestSplitBootMissingPhase(t *testing.T) {
	var kept []string
	for _, l := range strings.Split(sampleDmesg, "\n") {
		if !strings.Contains(l, "W+X") {
			kept = append(kept, l)
		}
	}
	phases, _, err := splitBoot(parseDmesg([]byte(strings.Join(kept, "\n"))))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := phases["kernel: W+X page check"]; ok {
		t.Error("a W+X phase without its line")
	}
	if d := phases["kernel: → run /init"]; d != 193440*time.Microsecond {
		t.Errorf("to /init %v, want 193.44ms", d)
	}
}

func TestSplitBootRefuses(t *testing.T) {
	for name, log := range map[string]string{
		"no agent marks": "[    1.000000] Run /init as init process\n",
		"bad mark":       "[    2.000000] cabin-agent: boot ports=zero\n",
		"out of order":   "[    1.000000] Run /init as init process\n[    0.500000] cabin-agent: boot main=-400.000 ports=0.000\n",
	} {
		if _, _, err := splitBoot(parseDmesg([]byte(log))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := syncAt(parseDmesg([]byte(sampleDmesg[:200]))); err == nil {
		t.Error("no sync line: accepted")
	}
}

func TestParseDmesgSkipsOddLines(t *testing.T) {
	for _, l := range []string{"", "no timestamp", "[", "[ 1.5] short fraction", "[x.000000] x", "[ 1.000000 no bracket",
		"[99999999999.000000] huge", "[-1.000000] negative"} {
		if got := parseDmesg([]byte(l)); len(got) != 0 {
			t.Errorf("%q parsed as %v", l, got)
		}
	}
}

// FuzzParseDmesg reads arbitrary bytes as dmesg output: lines come out
// with times within the kernel's printable range, in no more lines than
// went in, and splitting them never panics.
func FuzzParseDmesg(f *testing.F) {
	f.Add([]byte(sampleDmesg))
	f.Add([]byte("[    1.000000] cabin-agent: boot ready=1\n[0.000001]x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		lines := parseDmesg(b)
		if len(lines) > strings.Count(string(b), "\n")+1 {
			t.Fatalf("%d lines from %d", len(lines), strings.Count(string(b), "\n")+1)
		}
		for _, l := range lines {
			if l.at < 0 || l.at > (1<<32)*time.Second {
				t.Fatalf("time %v", l.at)
			}
		}
		phases, _, err := splitBoot(lines)
		for name, d := range phases {
			if err == nil && d < 0 {
				t.Fatalf("%s: negative %v", name, d)
			}
		}
	})
}

package bootcfg

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParse reads arbitrary kernel command lines as the agent does. What
// it accepts is valid (a DNS-label hostname or none, a known mode), turns
// back into kernel arguments that are single words of printable ASCII,
// and reads back the same from them, whatever surrounds them; what it
// refuses names a cabin parameter. The same bytes taken as a VM name give
// a host name (Hostname) that is a DNS label Args accepts, the name
// itself when it is one already.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "console=ttyS0 quiet", "cabin.hostname=vm1 cabin.mode=echo cabin.debug=1",
		"cabin.hostname=a cabin.hostname=b", "cabin.hostname=", "cabin.hostname=UPPER", "cabin.hostname=-a",
		"cabin.hostname=" + strings.Repeat("a", 64), "cabin.mode=shell", "cabin.debug=yes", "cabin.debug",
		"cabin.hostname=x\u00a0init=/bin/sh", "cabin.hostname=a\tcabin.mode=echo", "-- cabin.mode=echo",
		"cabin.hostname=a=b", "cabin.hostname==", "\x00cabin.mode=echo",
		"default", "My VM_1", "..", "-x-", "ünï€", "\u212a", strings.Repeat("a", 70), strings.Repeat("-", 70) + "a",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmdline string) {
		if h := Hostname(cmdline); !isLabel(h) || (isLabel(cmdline) && h != cmdline) {
			t.Fatalf("Hostname(%q) = %q", cmdline, h)
		} else if _, err := (Params{Hostname: h}).Args(); err != nil {
			t.Fatalf("Hostname(%q) = %q: %v", cmdline, h, err)
		}
		p, err := Parse(cmdline)
		if err != nil {
			if !strings.Contains(err.Error(), "hostname") && !strings.Contains(err.Error(), "mode") {
				t.Fatalf("Parse(%q): %v names no parameter", cmdline, err)
			}
			return
		}
		if p.Hostname != "" && !isLabel(p.Hostname) {
			t.Fatalf("Parse(%q) accepted hostname %q", cmdline, p.Hostname)
		}
		if p.Mode != ModeServe && p.Mode != ModeEcho {
			t.Fatalf("Parse(%q) accepted mode %q", cmdline, p.Mode)
		}
		args, err := p.Args()
		if err != nil {
			t.Fatalf("%+v parsed from %q: Args: %v", p, cmdline, err)
		}
		for _, a := range args {
			for i := 0; i < len(a); i++ {
				if a[i] <= ' ' || a[i] >= 0x7f || a[i] == '"' || a[i] == '\\' {
					t.Fatalf("argument %q holds %q", a, a[i])
				}
			}
		}
		again, err := Parse("console=ttyS0 " + strings.Join(args, " ") + " panic=-1")
		if err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("%+v from %q reads back from %q as %+v, %v", p, cmdline, args, again, err)
		}
	})
}

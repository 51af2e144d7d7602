package bootcfg

import (
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, p := range []Params{
		{},
		{Hostname: "default"},
		{Hostname: "a-1", Mode: ModeEcho, Debug: true},
	} {
		args, err := p.Args()
		if err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		got, err := Parse("console=ttyS0 quiet " + strings.Join(args, " ") + " panic=-1")
		if err != nil {
			t.Fatalf("Parse(%q): %v", args, err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("round trip of %+v gave %+v", p, got)
		}
	}
}

func TestArgsRejectsUnsafeValues(t *testing.T) {
	for _, p := range []Params{
		{Hostname: "a b"},
		{Hostname: "x init=/bin/sh"},
		{Hostname: "-a"},
		{Hostname: strings.Repeat("a", 64)},
		{Hostname: "UPPER"},
		{Mode: "shell"},
	} {
		if args, err := p.Args(); err == nil {
			t.Errorf("%+v accepted as %q", p, args)
		}
	}
	if _, err := Parse("cabin.mode=bogus"); err == nil {
		t.Error("Parse accepted an unknown mode")
	}
}

func TestHostname(t *testing.T) {
	for in, want := range map[string]string{
		"default":               "default",
		"My VM_1":               "my-vm-1",
		"..":                    "cabin",
		"-x-":                   "x",
		strings.Repeat("a", 70): strings.Repeat("a", 63),
	} {
		if got := Hostname(in); got != want {
			t.Errorf("Hostname(%q) = %q, want %q", in, got, want)
		}
		if _, err := (Params{Hostname: Hostname(in)}).Args(); err != nil {
			t.Errorf("Hostname(%q) is not accepted: %v", in, err)
		}
	}
}

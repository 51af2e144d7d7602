package main

import (
	"regexp"
	"strings"
	"testing"
)

// The written-out checks accept exactly what the patterns they replace did.
var (
	containerIDRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)
	rootfsNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
)

func checkNameFuncs(t *testing.T, s string) {
	if got, want := validContainerID(s), containerIDRE.MatchString(s); got != want {
		t.Errorf("validContainerID(%q) = %v, the pattern says %v", s, got, want)
	}
	if got, want := validRootfsName(s), rootfsNameRE.MatchString(s); got != want {
		t.Errorf("validRootfsName(%q) = %v, the pattern says %v", s, got, want)
	}
}

func TestNameChecks(t *testing.T) {
	for _, s := range []string{"", "a", "A", "_", ".", "-", "a.b-c_d", "web-1", "Web", ".x", "-x", "x/y", "..",
		"a\n", "a b", "é", strings.Repeat("a", 64), strings.Repeat("a", 65), "x\x00"} {
		checkNameFuncs(t, s)
	}
}

func FuzzNameChecks(f *testing.F) {
	for _, s := range []string{"web", "Web_1.x-y", ".a", strings.Repeat("z", 65)} {
		f.Add(s)
	}
	f.Fuzz(checkNameFuncs)
}

package bootcfg

import (
	"regexp"
	"testing"
)

// validMarkName accepts what the pattern it replaces did.
func TestValidMarkName(t *testing.T) {
	re := regexp.MustCompile(`^[a-z]{1,16}$`)
	for _, s := range []string{"", "a", "kernel", "abcdefghijklmnop", "abcdefghijklmnopq", "A", "a1", "a-b", "é", "a\n", "init "} {
		if got, want := validMarkName(s), re.MatchString(s); got != want {
			t.Errorf("validMarkName(%q) = %v, want %v", s, got, want)
		}
	}
}

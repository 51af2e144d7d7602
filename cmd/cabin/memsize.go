package main

import (
	"math"
	"strconv"
	"strings"
)

// memMiB is a memory size flag in MiB that also takes units, as docker's
// --memory does: 512M, 2G, 1.5G is refused (whole MiB only), and a bare
// number is MiB, as it always was.
type memMiB int

func (m *memMiB) String() string { return strconv.Itoa(int(*m)) }
func (m *memMiB) Type() string   { return "size" }

func (m *memMiB) Set(s string) error {
	t := strings.TrimSpace(s)
	if t != "" && t[len(t)-1] >= '0' && t[len(t)-1] <= '9' {
		t += "M" // a bare number: MiB
	}
	n, err := parseSize(t)
	if err != nil {
		return usagef("%q: want a size such as 512M or 2G, or MiB as a number", s)
	}
	if n%(1<<20) != 0 {
		return usagef("%q: not a whole number of MiB", s)
	}
	if n>>20 > math.MaxUint32 {
		return usagef("%q is too large", s)
	}
	*m = memMiB(n >> 20)
	return nil
}

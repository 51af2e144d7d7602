package kata

import (
	"strconv"
	"strings"
)

// NetDev is one interface's counters from /proc/<pid>/net/dev.
type NetDev struct {
	Name                               string
	RxBytes, RxPackets, RxErrs, RxDrop uint64
	TxBytes, TxPackets, TxErrs, TxDrop uint64
}

// ParseNetDev parses /proc/net/dev: two header lines, then "name: " and
// sixteen counters a line (eight received, eight sent). Lines that are not
// that are skipped.
func ParseNetDev(b []byte) []NetDev {
	var out []NetDev
	for line := range strings.SplitSeq(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " |") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			continue
		}
		var n [16]uint64
		valid := true
		for i := range n {
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				valid = false
				break
			}
			n[i] = v
		}
		if !valid {
			continue
		}
		out = append(out, NetDev{
			Name:    name,
			RxBytes: n[0], RxPackets: n[1], RxErrs: n[2], RxDrop: n[3],
			TxBytes: n[8], TxPackets: n[9], TxErrs: n[10], TxDrop: n[11],
		})
	}
	return out
}

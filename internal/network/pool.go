package network

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Pool is the IPv4 addresses VMs' taps take their subnets from: a range
// of whole /30s, each a VM's (+0 the network, +1 the host's end on the
// tap, +2 the guest, +3 broadcast), so that no two VMs share a segment.
type Pool struct {
	// First is the first address of the first /30; Last the last address
	// of the last.
	First, Last netip.Addr
}

// DefaultPool is upstream's: 100.115.92.24 to .63, ten /30s
// (spec/semantics.md, Addressing).
var DefaultPool = Pool{
	First: netip.AddrFrom4([4]byte{100, 115, 92, 24}),
	Last:  netip.AddrFrom4([4]byte{100, 115, 92, 63}),
}

// ParsePool reads a pool: an IPv4 CIDR of at least a /30
// ("100.115.0.0/16"), given by its network address, or a range of whole
// /30s ("100.115.92.24-100.115.92.63").
func ParsePool(s string) (Pool, error) {
	if first, last, ok := strings.Cut(s, "-"); ok {
		f, err := netip.ParseAddr(first)
		if err != nil {
			return Pool{}, fmt.Errorf("pool %q: %w", s, err)
		}
		l, err := netip.ParseAddr(last)
		if err != nil {
			return Pool{}, fmt.Errorf("pool %q: %w", s, err)
		}
		p := Pool{First: f, Last: l}
		if err := p.check(); err != nil {
			return Pool{}, fmt.Errorf("pool %q: %w", s, err)
		}
		return p, nil
	}
	prefix, err := netip.ParsePrefix(s)
	if err != nil {
		return Pool{}, fmt.Errorf("pool %q: want a CIDR or FIRST-LAST: %w", s, err)
	}
	if !prefix.Addr().Is4() {
		return Pool{}, fmt.Errorf("pool %q: not IPv4", s)
	}
	if prefix.Bits() > 30 {
		return Pool{}, fmt.Errorf("pool %q: smaller than a /30", s)
	}
	if prefix.Bits() < 8 {
		return Pool{}, fmt.Errorf("pool %q: larger than a /8", s)
	}
	if prefix.Masked() != prefix {
		return Pool{}, fmt.Errorf("pool %q: not its network's address (%s)", s, prefix.Masked())
	}
	return Pool{First: prefix.Addr(), Last: lastOf(prefix)}, nil
}

// check tells whether p is a range of whole IPv4 /30s.
func (p Pool) check() error {
	switch {
	case !p.First.Is4() || !p.Last.Is4():
		return errors.New("not IPv4")
	case p.Last.Less(p.First):
		return errors.New("its last address comes before its first")
	case u32(p.First)%4 != 0:
		return fmt.Errorf("%s does not start a /30", p.First)
	case u32(p.Last)%4 != 3:
		return fmt.Errorf("%s does not end a /30", p.Last)
	case u32(p.Last)-u32(p.First) >= 1<<24:
		return errors.New("larger than a /8")
	}
	return nil
}

// String is the pool as a CIDR when it is one, else as FIRST-LAST.
func (p Pool) String() string {
	n := u32(p.Last) - u32(p.First) + 1
	if n&(n-1) == 0 && u32(p.First)%n == 0 {
		bits := 32
		for ; n > 1; n >>= 1 {
			bits--
		}
		return netip.PrefixFrom(p.First, bits).String()
	}
	return p.First.String() + "-" + p.Last.String()
}

// Size is how many /30s p holds.
func (p Pool) Size() int { return int((u32(p.Last)-u32(p.First))/4 + 1) }

// Subnet is p's i-th /30, counting from 0.
func (p Pool) Subnet(i int) netip.Prefix {
	return netip.PrefixFrom(from32(u32(p.First)+4*uint32(i)), 30)
}

// Contains tells whether a is one of p's addresses.
func (p Pool) Contains(a netip.Addr) bool {
	return a.Is4() && !a.Less(p.First) && !p.Last.Less(a)
}

// Overlaps tells whether prefix holds any of p's addresses.
func (p Pool) Overlaps(prefix netip.Prefix) bool {
	if !prefix.Addr().Is4() {
		return false
	}
	prefix = prefix.Masked()
	return !lastOf(prefix).Less(p.First) && !p.Last.Less(prefix.Addr())
}

// Prefixes are the CIDRs that make up p, fewest first: what a firewall
// rule matches.
func (p Pool) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for lo, hi := uint64(u32(p.First)), uint64(u32(p.Last)); lo <= hi; {
		bits := 32
		// The largest block starting at lo that ends by hi.
		for bits > 0 {
			size := uint64(1) << (32 - (bits - 1))
			if lo%size != 0 || lo+size-1 > hi {
				break
			}
			bits--
		}
		out = append(out, netip.PrefixFrom(from32(uint32(lo)), bits))
		lo += uint64(1) << (32 - bits)
	}
	return out
}

// gateway is the host's end of subnet: its +1.
func gateway(subnet netip.Prefix) netip.Addr { return subnet.Addr().Next() }

// guest is the VM's address in subnet: its +2.
func guest(subnet netip.Prefix) netip.Addr { return subnet.Addr().Next().Next() }

func lastOf(prefix netip.Prefix) netip.Addr {
	return from32(u32(prefix.Addr()) | (1<<(32-prefix.Bits()) - 1))
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func from32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

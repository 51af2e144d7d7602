package network

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParsePool(t *testing.T) {
	for _, c := range []struct {
		in, want string
		size     int
	}{
		{"100.115.92.24-100.115.92.63", "100.115.92.24-100.115.92.63", 10},
		{"100.115.92.0/24", "100.115.92.0/24", 64},
		{"100.115.92.0-100.115.92.255", "100.115.92.0/24", 64},
		{"10.200.0.0/16", "10.200.0.0/16", 16384},
		{"192.168.7.4/30", "192.168.7.4/30", 1},
		{"10.0.0.0/8", "10.0.0.0/8", 1 << 22},
	} {
		p, err := ParsePool(c.in)
		if err != nil {
			t.Errorf("ParsePool(%q): %v", c.in, err)
			continue
		}
		if p.String() != c.want || p.Size() != c.size {
			t.Errorf("ParsePool(%q) = %s of %d subnets, want %s of %d", c.in, p, p.Size(), c.want, c.size)
		}
	}
	for _, bad := range []string{
		"", "100.115.92.0", "100.115.92.0/31", "100.115.92.1/24", "fd00::/64", "10.0.0.0/7",
		"100.115.92.25-100.115.92.63", "100.115.92.24-100.115.92.62", "100.115.92.63-100.115.92.24",
		"x-100.115.92.63", "100.115.92.24-y", "::-::ffff", "0.0.0.0-255.255.255.255",
	} {
		if p, err := ParsePool(bad); err == nil {
			t.Errorf("ParsePool(%q) = %s, want an error", bad, p)
		}
	}
}

func TestDefaultPool(t *testing.T) {
	if err := DefaultPool.check(); err != nil {
		t.Fatal(err)
	}
	if DefaultPool.Size() != 10 {
		t.Errorf("default pool of %d subnets, want upstream's 10", DefaultPool.Size())
	}
	if got := DefaultPool.Subnet(0).String(); got != "100.115.92.24/30" {
		t.Errorf("first subnet %s", got)
	}
	if got := DefaultPool.Subnet(9).String(); got != "100.115.92.60/30" {
		t.Errorf("last subnet %s", got)
	}
	s := DefaultPool.Subnet(0)
	if gateway(s).String() != "100.115.92.25" || guest(s).String() != "100.115.92.26" {
		t.Errorf("subnet %s: gateway %s, guest %s; want .25 and .26", s, gateway(s), guest(s))
	}
	want := []netip.Prefix{netip.MustParsePrefix("100.115.92.24/29"), netip.MustParsePrefix("100.115.92.32/27")}
	if got := DefaultPool.Prefixes(); !slices.Equal(got, want) {
		t.Errorf("prefixes %v, want %v", got, want)
	}
}

func TestPoolOverlaps(t *testing.T) {
	for _, c := range []struct {
		prefix string
		want   bool
	}{
		{"100.115.92.0/24", true},
		{"100.115.92.0/28", false}, // .0 to .15
		{"100.115.92.16/29", false},
		{"100.115.92.24/32", true},
		{"100.115.92.63/32", true},
		{"100.115.92.64/26", false},
		{"100.64.0.0/10", true},
		{"10.0.0.0/8", false},
		{"fd00::/8", false},
	} {
		p := netip.MustParsePrefix(c.prefix)
		if got := DefaultPool.Overlaps(p); got != c.want {
			t.Errorf("Overlaps(%s) = %v, want %v", p, got, c.want)
		}
	}
}

func TestPrefixesCoverThePool(t *testing.T) {
	for _, s := range []string{"100.115.92.24-100.115.92.63", "10.0.0.4-10.0.1.11", "10.1.0.0/16"} {
		p, err := ParsePool(s)
		if err != nil {
			t.Fatal(err)
		}
		next := p.First
		var parts []string
		for _, pr := range p.Prefixes() {
			if pr.Addr() != next {
				t.Fatalf("%s: prefixes %v leave a gap before %s", s, p.Prefixes(), pr)
			}
			next = lastOf(pr).Next()
			parts = append(parts, pr.String())
		}
		if next != p.Last.Next() {
			t.Errorf("%s: prefixes %s end before %s", s, strings.Join(parts, " "), p.Last)
		}
	}
}

func TestTapNameAndMAC(t *testing.T) {
	const id = "0123456789abcdef"
	if got := tapName(id); got != "cbn0123456789ab" || !isTapName(got) || len(got) > 15 {
		t.Errorf("tapName = %q", got)
	}
	mac := macOf(id)
	if mac.String() != "02:01:23:45:67:89" {
		t.Errorf("macOf = %s", mac)
	}
	// Unicast, locally administered.
	if mac[0]&1 != 0 || mac[0]&2 == 0 {
		t.Errorf("%s is not a unicast, locally administered address", mac)
	}
	for _, n := range []string{"cbn0123456789a", "cbn0123456789abc", "eth0", "cbn0123456789AB", "xbn0123456789ab"} {
		if isTapName(n) {
			t.Errorf("isTapName(%q)", n)
		}
	}
}

package network

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// TableName is cabind's nftables table (family ip). cabind owns it
// entirely: it makes it anew at start, and nothing else should put rules
// in it.
const TableName = "cabin"

// The table's chains.
const (
	postroutingChain = "postrouting"
	forwardChain     = "forward"
)

// applyNAT makes cabind's table anew, in one transaction: an existing one
// is deleted with everything in it, so a second run leaves the same
// ruleset as the first, and no packet ever sees half a table.
//
//	table ip cabin {
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr FIRST-LAST ip daddr != FIRST-LAST masquerade
//		}
//		chain forward {
//			type filter hook forward priority filter; policy accept;
//			iifname "cbn*" ip saddr FIRST-LAST accept
//			iifname "cbn*" drop
//			oifname "cbn*" ip daddr FIRST-LAST accept
//		}
//	}
//
// Traffic from the pool to outside it leaves with the host's address.
// Forwarding to and from the taps is accepted, but for what a tap sends
// from an address outside the pool, which is spoofed and dropped. The
// accepts do not overrule another table's drop (a forward policy of drop
// set up by Docker, or by the host's firewall): that table must let the
// pool through itself.
func applyNAT(pool Pool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	// Adding a table that exists changes nothing: so the delete that
	// follows never fails for want of one.
	c.AddTable(t)
	c.DelTable(t)
	t = c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	post := c.AddChain(&nftables.Chain{
		Name: postroutingChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	})
	fwd := c.AddChain(&nftables.Chain{
		Name: forwardChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	for _, r := range natRules(pool) {
		r.Table = t
		switch r.Chain.Name {
		case postroutingChain:
			r.Chain = post
		case forwardChain:
			r.Chain = fwd
		}
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nftables: make table ip %s: %w", TableName, err)
	}
	return nil
}

// natRules are the table's rules, each naming its chain.
func natRules(pool Pool) []*nftables.Rule {
	first, last := pool.First.AsSlice(), pool.Last.AsSlice()
	// The IPv4 header's source and destination addresses.
	saddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
	daddr := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
	inPool := &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: first, ToData: last}
	notInPool := &expr.Range{Op: expr.CmpOpNeq, Register: 1, FromData: first, ToData: last}
	// An interface name that starts with the taps' prefix: compared
	// without its NUL, as nft does a name ending in "*".
	ifname := func(key expr.MetaKey) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(tapPrefix)},
		}
	}
	verdict := func(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }
	join := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	chain := func(name string) *nftables.Chain { return &nftables.Chain{Name: name} }
	return []*nftables.Rule{
		{Chain: chain(postroutingChain), Exprs: []expr.Any{saddr, inPool, daddr, notInPool, &expr.Masq{}}},
		{Chain: chain(forwardChain), Exprs: join(ifname(expr.MetaKeyIIFNAME), []expr.Any{saddr, inPool, verdict(expr.VerdictAccept)})},
		{Chain: chain(forwardChain), Exprs: join(ifname(expr.MetaKeyIIFNAME), []expr.Any{verdict(expr.VerdictDrop)})},
		{Chain: chain(forwardChain), Exprs: join(ifname(expr.MetaKeyOIFNAME), []expr.Any{daddr, inPool, verdict(expr.VerdictAccept)})},
	}
}

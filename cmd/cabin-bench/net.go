package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// connsPerTurn is how many connections each way the connection-setup
// measurement makes per turn; the two ways take turns.
const connsPerTurn = 20

// benchNet measures TCP between the host and a guest: throughput over the
// VM's tap, against the same transfer between two namespaces over a veth
// pair; throughput through a port forward, against the tap; and the time
// to set a connection up through a forward, against a direct connection
// to the guest's address.
func benchNet(ctx context.Context, e *env, o options, t *table) error {
	n, err := setupNet(ctx, e, o)
	if err != nil {
		return err
	}
	defer n.close()
	veth, direct, fwd := n.veth(), n.direct(), n.forward()

	progress("net: %d transfers of %s each way over veth, tap and forward, taking turns", o.netRounds, o.transfer)
	// send is the host side writing (host → guest), recv the host side
	// reading (guest → host).
	modes := []string{"send", "recv"}
	paths := []route{veth, direct, fwd}
	// A short transfer on each path first, not counted, as the RPC
	// measurements warm their paths up.
	for _, mode := range modes {
		for _, p := range paths {
			if _, err := n.run(ctx, p, mode, "-for", "500ms"); err != nil {
				return err
			}
		}
	}
	// rates[mode][path][round]. The three paths of a direction run back
	// to back, in an order that turns round by round, and each ratio is
	// the median of the rounds' own: the host's speed drifts (on a shared
	// host, by a factor of two within a minute), and a drift between
	// rounds then moves both sides of a ratio alike.
	rates := make([][][]float64, len(modes))
	for m := range modes {
		rates[m] = make([][]float64, len(paths))
	}
	for r := 0; r < o.netRounds; r++ {
		for m, mode := range modes {
			for i := range paths {
				k := (i + r) % len(paths)
				out, err := n.run(ctx, paths[k], mode, "-for", o.transfer.String())
				if err != nil {
					return err
				}
				rate, err := transferRate(out)
				if err != nil {
					return fmt.Errorf("%s %s: %w", paths[k].name, mode, err)
				}
				rates[m][k] = append(rates[m][k], rate)
			}
		}
	}
	for m, dir := range []string{"host → guest", "guest → host"} {
		vethR, tapR, fwdR := rates[m][0], rates[m][1], rates[m][2]
		tapRatios, fwdRatios := roundRatios(tapR, vethR), roundRatios(fwdR, tapR)
		t.add(row{metric: "net: TCP " + dir + " over the tap", rate: medianRate(tapR),
			baseline: "the same over veth, namespace to namespace", baseRate: medianRate(vethR),
			ratio:  medianRate(tapRatios),
			detail: fmt.Sprintf("tap %s; veth %s; %s", rateSpread(tapR), rateSpread(vethR), ratioSpread(tapRatios))})
		t.add(row{metric: "net: TCP " + dir + " through a forward", rate: medianRate(fwdR),
			baseline: "over the tap", baseRate: medianRate(tapR),
			ratio:  medianRate(fwdRatios),
			detail: fmt.Sprintf("forward %s; %s", rateSpread(fwdR), ratioSpread(fwdRatios))})
	}

	turns := max(o.conns/connsPerTurn, 1)
	progress("net: %d connections through the forward and %d direct, taking turns", turns*connsPerTurn, turns*connsPerTurn)
	ways := []route{fwd, direct}
	for _, w := range ways {
		if _, err := n.run(ctx, w, "connect", "-n", "5"); err != nil {
			return err
		}
	}
	got := make([][]time.Duration, len(ways))
	for r := 0; r < turns; r++ {
		for i := range ways {
			k := (i + r) % len(ways)
			out, err := n.run(ctx, ways[k], "connect", "-n", strconv.Itoa(connsPerTurn))
			if err != nil {
				return err
			}
			ds, err := setupTimes(out)
			if err != nil {
				return err
			}
			got[k] = append(got[k], ds...)
		}
	}
	viaFwd, viaTap := got[0], got[1]
	t.add(row{metric: "net: connect + 1-byte round trip through a forward, median", value: median(viaFwd),
		baseline: "direct to the guest's address", base: median(viaTap),
		detail: fmt.Sprintf("forward %s; direct %s", spread(viaFwd), spread(viaTap))})
	t.add(row{metric: "net: connect + 1-byte round trip through a forward, p90", value: p90(viaFwd),
		baseline: "direct, p90", base: p90(viaTap)})
	return nil
}

func p90(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)*9/10]
}

// roundRatios is each round's a over its b.
func roundRatios(a, b []float64) []float64 {
	out := make([]float64, len(a))
	for i := range a {
		out[i] = a[i] / b[i]
	}
	return out
}

// ratioSpread says what the ratio is, and how far the rounds' own ratios
// spread.
func ratioSpread(rs []float64) string {
	s := slices.Clone(rs)
	slices.Sort(s)
	return fmt.Sprintf("ratio: the median of the rounds' own, which range %.2f×–%.2f×", s[0], s[len(s)-1])
}

func medianRate(rs []float64) float64 {
	s := slices.Clone(rs)
	slices.Sort(s)
	return s[len(s)/2]
}

// rateSpread summarises transfer rates as min/median/max.
func rateSpread(rs []float64) string {
	s := slices.Clone(rs)
	slices.Sort(s)
	return fmt.Sprintf("min %s med %s max %s (n=%d)", mbps(s[0]), mbps(s[len(s)/2]), mbps(s[len(s)-1]), len(s))
}

// mbps formats a rate in bytes a second as MB/s (10⁶ bytes).
func mbps(r float64) string {
	if r >= 100e6 {
		return fmt.Sprintf("%.0f MB/s", r/1e6)
	}
	return fmt.Sprintf("%.1f MB/s", r/1e6)
}

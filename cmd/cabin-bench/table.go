package main

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// row is one result: a time against a baseline (value, base, goal as the
// largest acceptable ratio), a rate against a baseline (rate, baseRate,
// in bytes a second, and ratio when it is not rate/baseRate), or a size
// against a limit (bytes, limit). A row without a goal shows its ratio
// only.
type row struct {
	metric   string
	value    time.Duration
	baseline string
	base     time.Duration
	goal     float64
	detail   string
	bytes    int64
	limit    int64
	rate     float64
	baseRate float64
	ratio    float64
}

type table struct{ rows []row }

func (t *table) add(r row) { t.rows = append(t.rows, r) }

func (t *table) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tMEASURED\tBASELINE\tRATIO\tGOAL\tMET")
	for _, r := range t.rows {
		if r.limit > 0 {
			fmt.Fprintf(tw, "%s\t%.1f MiB\t-\t-\t≤ %.0f MiB\t%s\n", r.metric,
				float64(r.bytes)/mib, float64(r.limit)/mib, mark(r.bytes <= r.limit))
			continue
		}
		if r.rate > 0 {
			fmt.Fprintf(tw, "%s\t%s\t%s: %s\t%.2f×\t-\t-\n", r.metric, mbps(r.rate),
				r.baseline, mbps(r.baseRate), cmp.Or(r.ratio, r.rate/r.baseRate))
			continue
		}
		ratio := float64(r.value) / float64(r.base)
		goal, met := "-", "-"
		if r.goal > 0 {
			goal, met = fmt.Sprintf("≤ %.2f×", r.goal), mark(ratio <= r.goal)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s: %s\t%.2f×\t%s\t%s\n", r.metric, round(r.value),
			r.baseline, round(r.base), ratio, goal, met)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, r := range t.rows {
		if r.detail != "" {
			fmt.Fprintf(w, "%s: %s\n", r.metric, r.detail)
		}
	}
}

func mark(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// spread summarises samples as min/median/p90/max.
func spread(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("min %s med %s p90 %s max %s (n=%d)", round(s[0]), round(s[len(s)/2]),
		round(s[len(s)*9/10]), round(s[len(s)-1]), len(s))
}

package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/procfs"
)

// vmCollector reads each VM's QEMU from /proc when scraped, so an idle
// cabind does no work for metrics nobody asks for.
type vmCollector struct {
	vms             func() []VM
	cpu, rss, pss   *prometheus.Desc
	threads, number *prometheus.Desc
}

func newVMCollector(vms func() []VM) *vmCollector {
	labels := []string{"owner", "vm"}
	return &vmCollector{
		vms:     vms,
		cpu:     prometheus.NewDesc("cabin_vm_cpu_seconds_total", "CPU time the VM's QEMU process used, user and system.", labels, nil),
		rss:     prometheus.NewDesc("cabin_vm_resident_memory_bytes", "Resident memory of the VM's QEMU process.", labels, nil),
		pss:     prometheus.NewDesc("cabin_vm_proportional_memory_bytes", "Proportional set size of the VM's QEMU process (shared pages divided among their users).", labels, nil),
		threads: prometheus.NewDesc("cabin_vm_threads", "Threads of the VM's QEMU process.", labels, nil),
		number:  prometheus.NewDesc("cabin_vms", "VMs cabind manages whose QEMU runs.", nil, nil),
	}
}

func (c *vmCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.cpu, c.rss, c.pss, c.threads, c.number} {
		ch <- d
	}
}

func (c *vmCollector) Collect(ch chan<- prometheus.Metric) {
	n := 0
	for _, vm := range c.vms() {
		if vm.PID <= 0 {
			continue
		}
		p, err := procfs.NewProc(vm.PID)
		if err != nil {
			continue // exited since it was listed
		}
		st, err := p.Stat()
		if err != nil {
			continue
		}
		n++
		ch <- prometheus.MustNewConstMetric(c.cpu, prometheus.CounterValue, st.CPUTime(), vm.Owner, vm.Name)
		ch <- prometheus.MustNewConstMetric(c.rss, prometheus.GaugeValue, float64(st.ResidentMemory()), vm.Owner, vm.Name)
		ch <- prometheus.MustNewConstMetric(c.threads, prometheus.GaugeValue, float64(st.NumThreads), vm.Owner, vm.Name)
		if r, err := p.ProcSMapsRollup(); err == nil {
			ch <- prometheus.MustNewConstMetric(c.pss, prometheus.GaugeValue, float64(r.Pss), vm.Owner, vm.Name)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.number, prometheus.GaugeValue, float64(n))
}

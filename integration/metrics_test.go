package integration

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// freeLoopbackPort is a loopback address:port nothing listens on now.
func freeLoopbackPort() (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer lis.Close()
	return lis.Addr().String(), nil
}

// TestMetrics scrapes the shared cabind's metrics endpoint, as Prometheus
// would, after a call relayed to the shared VM: the VM's QEMU has its
// series, the call and the relayed bytes are counted, the boot is timed.
func TestMetrics(t *testing.T) {
	e := needEnv(t)
	if e.metrics == "" {
		t.Skip("the shared cabind serves no metrics")
	}
	mustExec(t, e, sharedName, "true")
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		for _, m := range fams[name].GetMetric() {
			match := true
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				match = match && found
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
		return 0, false
	}
	vm := map[string]string{"vm": sharedName}
	if v, ok := value("cabin_vm_cpu_seconds_total", vm); !ok || v <= 0 {
		t.Errorf("the shared VM's QEMU CPU time: %g, %v; want > 0", v, ok)
	}
	if v, ok := value("cabin_vm_proportional_memory_bytes", vm); !ok || v < 16<<20 {
		t.Errorf("the shared VM's QEMU PSS: %g, %v; want MiBs", v, ok)
	}
	if v, ok := value("cabind_relayed_bytes_total", map[string]string{"direction": "to_agent"}); !ok || v <= 0 {
		t.Errorf("relayed bytes to agents: %g, %v; want > 0 after an exec", v, ok)
	}
	if v, ok := value("cabind_api_call_duration_seconds", map[string]string{"code": "OK"}); !ok || v < 1 {
		t.Errorf("calls answered OK: %g, %v", v, ok)
	}
	// Boots this cabind timed: none when it was restarted (its VMs
	// adopted) since the last start, so only the series is required.
	if _, ok := value("cabind_vm_boot_duration_seconds", nil); !ok {
		t.Error("no boot duration series")
	}
}

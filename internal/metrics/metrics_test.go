package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape fetches h's metrics and parses them with Prometheus's own text
// parser, as a Prometheus server would.
func scrape(t *testing.T, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return fams
}

// series finds the metric of family name whose labels include want.
func series(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("no family %s", name)
	}
next:
	for _, m := range fam.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no %s series with %v", name, want)
	return nil
}

func TestMetrics(t *testing.T) {
	// This test's own process stands in for a VM's QEMU: what is read
	// from /proc is real. A VM whose process is gone is left out.
	met := New(func() []VM {
		return []VM{{Owner: "alice", Name: "dev", PID: os.Getpid()}, {Owner: "bob", Name: "gone", PID: 1 << 30}}
	})
	met.ObserveCall("/vm_tools.concierge.VmConcierge/GetVmInfo", "OK", 3*time.Millisecond)
	met.ObserveCall("/vm_tools.concierge.VmConcierge/GetVmInfo", "OK", 5*time.Millisecond)
	met.ObserveCall("/vm_tools.concierge.VmConcierge/StartVm", "InvalidArgument", time.Millisecond)
	met.Relayed(true, 100)
	met.Relayed(false, 40)
	met.Relayed(false, 2)
	met.ObserveBoot(1900 * time.Millisecond)
	met.ObserveImage(2*time.Millisecond, false, nil)
	met.ObserveImage(30*time.Second, true, nil)
	met.ObserveImage(time.Second, false, errors.New("apt is down"))

	fams := scrape(t, met.Handler())
	calls := series(t, fams, "cabind_api_call_duration_seconds", map[string]string{"method": "/vm_tools.concierge.VmConcierge/GetVmInfo", "code": "OK"})
	if h := calls.GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() < 0.0079 || h.GetSampleSum() > 0.0081 {
		t.Errorf("GetVmInfo calls: count %d sum %g, want 2 and 0.008", h.GetSampleCount(), h.GetSampleSum())
	}
	series(t, fams, "cabind_api_call_duration_seconds", map[string]string{"method": "/vm_tools.concierge.VmConcierge/StartVm", "code": "InvalidArgument"})
	if got := series(t, fams, "cabind_relayed_bytes_total", map[string]string{"direction": "to_agent"}).GetCounter().GetValue(); got != 100 {
		t.Errorf("to_agent = %g, want 100", got)
	}
	if got := series(t, fams, "cabind_relayed_bytes_total", map[string]string{"direction": "from_agent"}).GetCounter().GetValue(); got != 42 {
		t.Errorf("from_agent = %g, want 42", got)
	}
	if got := series(t, fams, "cabind_vm_boot_duration_seconds", nil).GetHistogram().GetSampleCount(); got != 1 {
		t.Errorf("boots = %d, want 1", got)
	}
	for _, result := range []string{"cached", "built", "failed"} {
		if got := series(t, fams, "cabind_image_check_duration_seconds", map[string]string{"result": result}).GetHistogram().GetSampleCount(); got != 1 {
			t.Errorf("image checks %s = %d, want 1", result, got)
		}
	}
	dev := map[string]string{"owner": "alice", "vm": "dev"}
	if got := series(t, fams, "cabin_vm_resident_memory_bytes", dev).GetGauge().GetValue(); got < 1<<20 {
		t.Errorf("resident memory %g, want this process's (MiBs)", got)
	}
	if got := series(t, fams, "cabin_vm_threads", dev).GetGauge().GetValue(); got < 1 {
		t.Errorf("threads %g", got)
	}
	series(t, fams, "cabin_vm_cpu_seconds_total", dev)
	if n := len(fams["cabin_vm_cpu_seconds_total"].GetMetric()); n != 1 {
		t.Errorf("%d VM series, want 1: the VM whose process is gone is left out", n)
	}
	if got := series(t, fams, "cabin_vms", nil).GetGauge().GetValue(); got != 1 {
		t.Errorf("cabin_vms = %g, want 1", got)
	}
	// cabind's own process and runtime.
	series(t, fams, "process_resident_memory_bytes", nil)
	series(t, fams, "go_goroutines", nil)
}

func TestServe(t *testing.T) {
	if _, err := Listen("no-port"); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("Listen(no-port) = %v, want host:port asked for", err)
	}
	lis, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(lis.Addr().String()); err == nil {
		t.Error("a taken address was not refused")
	}
	met := New(func() []VM { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { met.Serve(ctx, lis, slog.New(slog.NewTextHandler(io.Discard, nil))); close(done) }()
	resp, err := http.Get("http://" + lis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "cabin_vms 0") {
		t.Errorf("metrics lack cabin_vms 0:\n%.500s", body)
	}
	if resp, err := http.Post("http://"+lis.Addr().String()+"/metrics", "text/plain", nil); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST /metrics: %s, want 405", resp.Status)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

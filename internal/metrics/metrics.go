// Package metrics is cabind's Prometheus exposition: the API calls it
// serves (by method and status code, with latencies), the bytes it relays
// to and from agents, VM boots, guest image builds, and each VM's QEMU as
// the host sees it (CPU time, resident and proportional memory), read from
// /proc when scraped. It serves them over HTTP on an address of the
// operator's choosing; nothing is exposed unless one is given.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// VM is one VM whose QEMU process the metrics describe.
type VM struct {
	Owner, Name string
	PID         int
}

// Metrics holds cabind's metrics. Its methods are safe for concurrent use.
type Metrics struct {
	reg     *prometheus.Registry
	calls   *prometheus.HistogramVec
	relayed *prometheus.CounterVec
	boots   prometheus.Histogram
	builds  *prometheus.HistogramVec
}

// New returns metrics whose per-VM series come from vms, called on every
// scrape.
func New(vms func() []VM) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "cabind", Name: "api_call_duration_seconds",
			Help: "Calls served on cabind's socket, by full method and status code, and how long they took (streams: until they ended).",
			// From a cached GetVmInfo (~100 µs) to a VM start under TCG
			// (seconds).
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"method", "code"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cabind", Name: "relayed_bytes_total",
			Help: "Message bytes cabind relayed between callers and VMs' agents, by direction (to_agent, from_agent).",
		}, []string{"direction"}),
		boots: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cabind", Name: "vm_boot_duration_seconds",
			Help:    "Time from a VM's start to its agent being ready and its bring-up done.",
			Buckets: prometheus.ExponentialBuckets(0.125, 1.5, 12),
		}),
		builds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "cabind", Name: "image_check_duration_seconds",
			Help:    "Checks of the guest image before a start, by result: cached (nothing built), built, or failed.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"result"}),
	}
	m.reg.MustRegister(m.calls, m.relayed, m.boots, m.builds,
		newVMCollector(vms),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// ObserveCall records a call that ended (server.Server.Observe).
func (m *Metrics) ObserveCall(method, code string, took time.Duration) {
	m.calls.WithLabelValues(method, code).Observe(took.Seconds())
}

// Relayed records a message relayed to or from an agent (relay.Relay.Count).
func (m *Metrics) Relayed(toAgent bool, n int) {
	dir := "from_agent"
	if toAgent {
		dir = "to_agent"
	}
	m.relayed.WithLabelValues(dir).Add(float64(n))
}

// ObserveBoot records a VM that came up, took after its start.
func (m *Metrics) ObserveBoot(took time.Duration) { m.boots.Observe(took.Seconds()) }

// ObserveImage records a check of the guest image (guestimage.Builder's
// Observe).
func (m *Metrics) ObserveImage(took time.Duration, built bool, err error) {
	result := "cached"
	switch {
	case err != nil:
		result = "failed"
	case built:
		result = "built"
	}
	m.builds.WithLabelValues(result).Observe(took.Seconds())
}

// Handler serves the metrics in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Listen opens addr (host:port) for Serve. It is separate from Serve so a
// daemon fails at start, not later, when the address is taken.
func Listen(addr string) (net.Listener, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("metrics address %q: want host:port: %w", addr, err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return lis, nil
}

// Serve serves /metrics on lis until ctx ends.
func (m *Metrics) Serve(ctx context.Context, lis net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	log.Info("serving metrics", "address", lis.Addr().String())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics server failed", "err", err)
	}
}

package main

import (
	"strings"
	"testing"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
)

func (g *fakeGuest) listCalls() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lists
}

func keptOutput(c *fakeCtr, s string) {
	c.logs = []*containersv1.ContainerLogsResponse{{Stream: containersv1.LogStream_LOG_STREAM_STDOUT, Data: []byte(s)}}
}

// With --vm, or with one running VM, logs asks Logs straight away: no List.
func TestLogsNoList(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	keptOutput(dev.add("web", ctrStopped), "hello\n")
	for _, args := range [][]string{{"logs", "--vm", "dev", "web"}, {"logs", "web"}} {
		r := h.run(t, nil, args...)
		if r.code != 0 || r.stdout != "hello\n" {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	if n := dev.listCalls(); n != 0 {
		t.Errorf("List called %d times", n)
	}
}

// With several running VMs and no --vm, the VM that has the container is
// found by listing; an id in two VMs wants --vm.
func TestLogsSeveralVMs(t *testing.T) {
	h := startHost(t)
	dev, prod := h.vm("dev"), h.vm("prod")
	keptOutput(dev.add("web", ctrStopped), "from dev\n")
	keptOutput(prod.add("db", ctrStopped), "from prod\n")
	if r := h.run(t, nil, "logs", "db"); r.code != 0 || r.stdout != "from prod\n" {
		t.Fatalf("logs db: %+v", r)
	}
	if dev.listCalls() != 1 || prod.listCalls() != 1 {
		t.Errorf("List calls: dev %d, prod %d", dev.listCalls(), prod.listCalls())
	}
	keptOutput(prod.add("web", ctrStopped), "web of prod\n")
	r := h.run(t, nil, "logs", "web")
	if r.code != exitUsage || !strings.Contains(r.stderr, "more than one VM (dev, prod)") || r.stdout != "" {
		t.Fatalf("logs of an id in two VMs: %+v", r)
	}
	if r := h.run(t, nil, "logs", "--vm", "prod", "web"); r.code != 0 || r.stdout != "web of prod\n" {
		t.Fatalf("logs --vm prod web: %+v", r)
	}
}

// Errors read as when the containers were listed first.
func TestLogsNotFound(t *testing.T) {
	h := startHost(t)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no running VM", []string{"logs", "web"}, `no container "web" in your running VMs`},
		{"unknown VM", []string{"logs", "--vm", "nope", "web"}, "list the containers of nope: no VM nope"},
	}
	for _, c := range cases {
		r := h.run(t, nil, c.args...)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: %+v, want %q", c.name, r, c.want)
		}
	}
	dev := h.vm("dev")
	dev.add("other", ctrRunning)
	cases = []struct {
		name string
		args []string
		want string
	}{
		{"one VM, no such container", []string{"logs", "web"}, `no container "web" in your running VMs`},
		{"--vm, no such container", []string{"logs", "--vm", "dev", "web"}, `no container "web" in VM dev`},
	}
	for _, c := range cases {
		r := h.run(t, nil, c.args...)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%s: %+v, want %q", c.name, r, c.want)
		}
	}
	h.vm("prod")
	if r := h.run(t, nil, "logs", "web"); r.code != 1 || !strings.Contains(r.stderr, `no container "web" in your running VMs`) {
		t.Errorf("two VMs, no such container: %+v", r)
	}
}

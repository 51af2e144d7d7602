package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/client"
	"github.com/cabinvm/cabin/internal/statedir"
)

// hotplugRounds is how many NICs the hot-plug measurement plugs in and
// out.
const hotplugRounds = 10

// benchHotplug measures, in one run:
//
//   - boot to the agent (StartVm → VmStartedSignal) of a VM started with
//     hot-plug (q35: PCI, root ports, an xHCI controller; SeaBIOS runs
//     before the kernel) against the default microvm, taking turns;
//   - AttachNetDevice and DetachNetDevice round trips (a tap made, QMP
//     netdev_add, device_add and query-pci; then device_del, the wait for
//     the guest to let go, netdev_del, the tap removed), against a
//     GetVmInfo round trip, on a cabind with --net tap in a network
//     namespace of its own, so no tap is made on the host.
func benchHotplug(ctx context.Context, e *env, o options, t *table) error {
	runs := max(o.bootRuns/2, 2)
	var q35, micro []time.Duration
	for i := 0; i < runs; i++ {
		ways := []bool{true, false}
		if i%2 == 1 {
			ways = []bool{false, true}
		}
		for _, hotplug := range ways {
			name := fmt.Sprintf("hpboot%d-%v", i, hotplug)
			d, err := bootHotplug(ctx, e.cc, name, hotplug)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if _, err := concierge.NewVmConciergeClient(e.cc).StopVm(ctx, &concierge.StopVmRequest{Name: name}); err != nil {
				return fmt.Errorf("stop %s: %w", name, err)
			}
			if hotplug {
				q35 = append(q35, d)
			} else {
				micro = append(micro, d)
			}
		}
	}
	t.add(row{
		metric:   "boot to agent, q35 with hot-plug",
		value:    median(q35),
		baseline: "microvm",
		base:     median(micro),
		detail:   fmt.Sprintf("q35 %s, microvm %s", spread(q35), spread(micro)),
	})

	h, err := startHotplugCabind(ctx, e, o)
	if err != nil {
		return err
	}
	defer h.close()
	const name = "hotplug0"
	if _, err := bootHotplug(ctx, h.cc, name, true); err != nil {
		return err
	}
	c := concierge.NewVmConciergeClient(h.cc)
	var attach, detach, info []time.Duration
	for i := 0; i < hotplugRounds; i++ {
		start := time.Now()
		a, err := c.AttachNetDevice(ctx, &concierge.AttachNetDeviceRequest{VmName: name})
		if err == nil && !a.GetSuccess() {
			err = errors.New(a.GetFailureReason())
		}
		if err != nil {
			return fmt.Errorf("AttachNetDevice: %w", err)
		}
		attach = append(attach, time.Since(start))
		start = time.Now()
		d, err := c.DetachNetDevice(ctx, &concierge.DetachNetDeviceRequest{VmName: name, GuestBus: a.GetGuestBus()})
		if err == nil && !d.GetSuccess() {
			err = errors.New(d.GetFailureReason())
		}
		if err != nil {
			return fmt.Errorf("DetachNetDevice: %w", err)
		}
		detach = append(detach, time.Since(start))
		start = time.Now()
		if in, err := c.GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: name}); err != nil || !in.GetSuccess() {
			return fmt.Errorf("GetVmInfo: %v, %v", in, err)
		}
		info = append(info, time.Since(start))
	}
	t.add(row{
		metric:   "AttachNetDevice round trip",
		value:    median(attach),
		baseline: "GetVmInfo round trip",
		base:     median(info),
		detail:   fmt.Sprintf("attach %s, GetVmInfo %s", spread(attach), spread(info)),
	})
	t.add(row{
		metric:   "DetachNetDevice round trip (guest lets go)",
		value:    median(detach),
		baseline: "GetVmInfo round trip",
		base:     median(info),
		detail:   fmt.Sprintf("detach %s", spread(detach)),
	})
	return nil
}

// bootHotplug starts name, with hot-plug or not, and times it from
// StartVm to VmStartedSignal.
func bootHotplug(ctx context.Context, cc *grpc.ClientConn, name string, hotplug bool) (time.Duration, error) {
	d, _, err := startAndWait(ctx, cc, &cabinv1.StartVmRequest{
		Request:   &concierge.StartVmRequest{Name: name, Cpus: benchCPUs},
		MemoryMib: benchMemoryMiB,
		Hotplug:   hotplug,
	})
	return d, err
}

// hotplugCabind is a cabind with --net tap in a network namespace of its
// own, with the guest image the bench's cabind built.
type hotplugCabind struct {
	ns     netns
	cmd    *exec.Cmd
	done   chan struct{}
	cc     *grpc.ClientConn
	closed bool
}

func startHotplugCabind(ctx context.Context, e *env, o options) (_ *hotplugCabind, err error) {
	ns, err := addNetns(fmt.Sprintf("cbench-%d-hp", os.Getpid()))
	if err != nil {
		return nil, err
	}
	h := &hotplugCabind{ns: ns}
	defer func() {
		if err != nil {
			h.close()
		}
	}()
	state := filepath.Join(e.dir, "hpstate")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	first, err := statedir.New(filepath.Join(e.dir, "state"))
	if err != nil {
		return nil, err
	}
	if out, err := exec.Command("cp", "-a", first.ImageDir(), state).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copy the guest image: %w: %s", err, strings.TrimSpace(string(out)))
	}
	sock := filepath.Join(e.dir, "hp.sock")
	h.cmd = ns.command(context.Background(), filepath.Join(o.bin, "cabind"), "--socket", sock,
		"--state-dir", state, "--agent", filepath.Join(o.bin, "cabin-agent"), "--config", "", "--kernel", o.kernel,
		"--qemu", o.qemu, "--net", "tap", "--log-level", "warn")
	h.cmd.Stderr = os.Stderr
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		return nil, err
	}
	h.done = make(chan struct{})
	go func() {
		h.cmd.Wait()
		close(h.done)
	}()
	if err := waitSocket(ctx, sock); err != nil {
		return nil, err
	}
	if h.cc, err = client.Dial(sock); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := concierge.NewVmConciergeClient(h.cc).ListVms(wctx, &concierge.ListVmsRequest{}, grpc.WaitForReady(true)); err != nil {
		return nil, fmt.Errorf("cabind in %s does not answer: %w", ns, err)
	}
	return h, nil
}

// close stops the VMs and the cabind, and deletes the namespace.
func (h *hotplugCabind) close() {
	if h.closed {
		return
	}
	h.closed = true
	errs := stopCabind(h.cc, h.cmd, h.done)
	if err := h.ns.delete(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		progress("hotplug: cleaning up: %v", err)
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/client"
	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/guestlink"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/qemu"
	"github.com/cabinvm/cabin/internal/relay"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// env is one bench run: a private cabind, and a second state root for the
// VMs the bench launches directly, bypassing cabind.
type env struct {
	dir      string
	keep     bool
	cabind   *exec.Cmd
	cc       *grpc.ClientConn
	kernel   string
	initrd   string
	direct   statedir.Root
	launcher *qemu.Launcher
	accel    hypervisor.Accel
	log      *slog.Logger
}

// The VM shape both paths boot: what `cabin vm start` asks for by default.
const (
	benchCPUs      = 1
	benchMemoryMiB = 512
)

func setup(ctx context.Context, o options, log *slog.Logger) (*env, error) {
	if os.Getuid() != 0 {
		return nil, errors.New("needs root (QEMU, the state dir)")
	}
	for _, b := range []string{"cabind", "cabin-agent"} {
		if _, err := os.Stat(filepath.Join(o.bin, b)); err != nil {
			return nil, fmt.Errorf("%s not found beside cabin-bench (run make build): %w", b, err)
		}
	}
	dir, err := os.MkdirTemp("", "cbench")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, keep: o.keep, log: log}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	if e.direct, err = statedir.New(filepath.Join(dir, "direct")); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "cabind.sock")
	e.cabind = exec.Command(filepath.Join(o.bin, "cabind"), "--socket", sock,
		"--state-dir", filepath.Join(dir, "state"), "--agent", filepath.Join(o.bin, "cabin-agent"), "--config", "", "--kernel", o.kernel,
		// No network: the direct launches it is measured against have
		// none, and the bench changes nothing of the host's.
		"--qemu", o.qemu, "--net", "none", "--log-level", "warn")
	e.cabind.Stderr = os.Stderr
	if err := e.cabind.Start(); err != nil {
		return nil, err
	}
	if e.cc, err = client.Dial(sock); err != nil {
		return nil, err
	}
	if err := waitSocket(ctx, sock); err != nil {
		return nil, err
	}
	progress("building the guest image")
	if err := e.buildImage(ctx); err != nil {
		return nil, err
	}
	// The direct launches use what cabind uses: the same launcher, the
	// same accelerator choice and the same TSC frequency.
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return nil, err
	}
	e.accel, _, err = qemu.DetectAccel(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	e.launcher = &qemu.Launcher{Binary: o.qemu, Log: log}
	if e.accel == hypervisor.AccelTCG {
		if e.launcher.TSCKHz, err = qemu.HostTSCKHz(); err != nil {
			return nil, err
		}
	}
	ok = true
	return e, nil
}

func waitSocket(ctx context.Context, path string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cabind did not create %s", path)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (e *env) buildImage(ctx context.Context) error {
	stream, err := cabinv1.NewImagesClient(e.cc).Build(ctx, &cabinv1.BuildImageRequest{})
	if err != nil {
		return err
	}
	for {
		p, err := stream.Recv()
		if err == io.EOF {
			return errors.New("image build ended without an image")
		}
		if err != nil {
			return err
		}
		if img := p.GetImage(); img != nil {
			e.kernel, e.initrd = img.GetKernelPath(), img.GetInitrdPath()
			return nil
		}
	}
}

func (e *env) close() {
	if e.cc != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		concierge.NewVmConciergeClient(e.cc).StopAllVms(ctx, nil)
		cancel()
		e.cc.Close()
	}
	if e.cabind != nil && e.cabind.Process != nil {
		e.cabind.Process.Signal(syscall.SIGTERM)
		e.cabind.Wait()
	}
	if !e.keep {
		os.RemoveAll(e.dir)
	} else {
		progress("kept %s", e.dir)
	}
}

// launchDirect starts a VM with the QEMU command cabind would use, without
// cabind, paused.
func (e *env) launchDirect(ctx context.Context, name string, mode bootcfg.Mode) (hypervisor.VM, statedir.VMDir, error) {
	dir := e.direct.VM(statedir.VMID("", name))
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		return nil, "", err
	}
	args, err := bootcfg.Params{Hostname: bootcfg.Hostname(name), Mode: mode}.Args()
	if err != nil {
		return nil, "", err
	}
	cfg := hypervisor.Config{
		Name: name, Dir: dir, Machine: hypervisor.MachineMicroVM, Accel: e.accel,
		CPUs: benchCPUs, MemoryMiB: benchMemoryMiB,
		Kernel: e.kernel, Initrd: e.initrd, KernelArgs: args,
	}
	return e.launch(ctx, cfg)
}

// launch starts the VM of cfg as cabind would, without cabind, paused.
func (e *env) launch(ctx context.Context, cfg hypervisor.Config) (hypervisor.VM, statedir.VMDir, error) {
	name, dir := cfg.Name, cfg.Dir
	// The console and the channel's ports, as cabind's resources give
	// every VM; nothing they hold needs releasing in the bench's own
	// directory.
	ref := resource.VM{Name: name, Dir: dir, Log: e.log}
	for _, k := range []resource.Kind{consolelog.Resource{}, guestlink.Ports{}} {
		if _, err := k.Prepare(ctx, ref, &cfg); err != nil {
			return nil, "", err
		}
	}
	claim, err := e.launcher.Claim(dir)
	if err != nil {
		return nil, "", err
	}
	defer claim.Release()
	vm, err := e.launcher.Launch(ctx, claim, cfg)
	return vm, dir, err
}

func kill(vm hypervisor.VM) {
	vm.Signal(syscall.SIGKILL)
	<-vm.Done()
	vm.Close()
}

// toVM routes a call on e.cc to the named VM's agent.
func toVM(ctx context.Context, name string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, relay.MetadataVM, name)
}

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cabinvm/cabin/internal/bootcfg"
	"github.com/cabinvm/cabin/internal/consolelog"
	"github.com/cabinvm/cabin/internal/guestlink"
	"github.com/cabinvm/cabin/internal/hypervisor"
	"github.com/cabinvm/cabin/internal/resource"
	"github.com/cabinvm/cabin/internal/statedir"
)

// bareInit is the bare guest's /init: /proc mounted, then a shell asleep.
// Nothing else runs: no agent, no modules loaded, no device driven.
const bareInit = `#!/bin/sh
mount -t proc proc /proc
exec sh -c 'while :; do sleep 3600; done'
`

// bareVM is the density measurement's baseline: cabind's QEMU command for
// a 256 MiB VM, launched directly, with a shell-only initramfs.
type bareVM struct {
	vm  hypervisor.VM
	pid int
}

func (b *bareVM) close() { kill(b.vm) }

// startBare builds the shell-only initramfs from the busybox-static
// package cabind's image build downloaded, and boots it with the QEMU
// command cabind uses (the same console, ports and balloon), running.
func startBare(ctx context.Context, e *env) (*bareVM, error) {
	initrd := filepath.Join(e.dir, "bare.cpio")
	if err := writeBareInitrd(ctx, e, initrd); err != nil {
		return nil, err
	}
	const name = "bare"
	dir := e.direct.VM(statedir.VMID("", name))
	if err := os.MkdirAll(dir.Path(), 0o700); err != nil {
		return nil, err
	}
	args, err := bootcfg.Params{Hostname: bootcfg.Hostname(name), Mode: bootcfg.ModeServe}.Args()
	if err != nil {
		return nil, err
	}
	cfg := hypervisor.Config{
		Name: name, Dir: dir, Machine: hypervisor.MachineMicroVM, Accel: e.accel,
		CPUs: benchCPUs, MemoryMiB: densityMemoryMiB,
		Kernel: e.kernel, Initrd: initrd, KernelArgs: args,
	}
	ref := resource.VM{Name: name, Dir: dir, Log: e.log}
	for _, k := range []resource.Kind{consolelog.Resource{}, guestlink.Ports{}} {
		if _, err := k.Prepare(ctx, ref, &cfg); err != nil {
			return nil, err
		}
	}
	claim, err := e.launcher.Claim(dir)
	if err != nil {
		return nil, err
	}
	defer claim.Release()
	vm, err := e.launcher.Launch(ctx, claim, cfg)
	if err != nil {
		return nil, err
	}
	if err := vm.Resume(ctx); err != nil {
		kill(vm)
		return nil, err
	}
	return &bareVM{vm: vm, pid: vm.PID()}, nil
}

// writeBareInitrd writes a newc cpio with busybox, links to it for the
// applets /init uses, /dev/console and /init.
func writeBareInitrd(ctx context.Context, e *env, dst string) error {
	debs, err := filepath.Glob(filepath.Join(e.dir, "state", "image", "downloads", "busybox-static_*.deb"))
	if err != nil {
		return err
	}
	if len(debs) == 0 {
		return errors.New("no busybox-static package among the image build's downloads")
	}
	x := filepath.Join(e.dir, "busybox")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[len(debs)-1], x).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %w: %s", debs[len(debs)-1], err, strings.TrimSpace(string(out)))
	}
	bb, err := os.ReadFile(filepath.Join(x, "bin", "busybox"))
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &newc{w: bufio.NewWriter(f)}
	w.dir("bin")
	w.dir("dev")
	w.dir("proc")
	w.file("bin/busybox", 0o755, bb)
	for _, a := range []string{"sh", "mount", "sleep"} {
		w.symlink("bin/"+a, "busybox")
	}
	w.charDev("dev/console", 0o600, 5, 1)
	w.file("init", 0o755, []byte(bareInit))
	if err := w.close(); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return f.Close()
}

// newc writes a cpio archive in the kernel's newc format, from fixed
// entries only; the first error sticks.
type newc struct {
	w   *bufio.Writer
	n   int64
	ino uint32
	err error
}

func (c *newc) dir(name string) { c.entry(name, 0o040755, 2, nil, 0, 0) }

func (c *newc) file(name string, perm uint32, b []byte) { c.entry(name, 0o100000|perm, 1, b, 0, 0) }

func (c *newc) symlink(name, target string) { c.entry(name, 0o120777, 1, []byte(target), 0, 0) }

func (c *newc) charDev(name string, perm, major, minor uint32) {
	c.entry(name, 0o020000|perm, 1, nil, major, minor)
}

func (c *newc) entry(name string, mode, nlink uint32, body []byte, rmajor, rminor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	// Fields: ino mode uid gid nlink mtime filesize devmajor devminor
	// rdevmajor rdevminor namesize check, each 8 hex digits.
	c.write([]byte(fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\x00",
		c.ino, mode, 0, 0, nlink, 0, len(body), 0, 0, rmajor, rminor, len(name)+1, 0, name)))
	c.pad()
	c.write(body)
	c.pad()
}

func (c *newc) write(b []byte) {
	if c.err != nil {
		return
	}
	m, err := c.w.Write(b)
	c.n += int64(m)
	c.err = err
}

func (c *newc) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *newc) close() error {
	c.entry("TRAILER!!!", 0, 1, nil, 0, 0)
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}

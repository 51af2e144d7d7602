package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/ociimage"
)

// The run-image measurement's image and VMs.
const (
	runImageTag   = "example.com/bench/runimg:v1"
	runImageVM    = "rimg"    // the images share (9p), as cabin run uses
	runImageBlkVM = "rimgblk" // the image's ext4 block image as a disk
	// blkLower is where the block VM mounts the image: below /run, as
	// an overlay's layers must be for the agent.
	blkLower      = "/run/blkimage"
	runImageRuns  = 20
	runImageBig   = 32 << 20 // one large file, read through each path
	runImageSmall = 500      // and many small ones
	runImageDense = 10
)

// benchRunImage measures cabin run IMAGE true on a warm VM (the cabin CLI
// as a user runs it) against the raw channel echo round trip; creating,
// starting, waiting for and removing a container over the image's two
// possible ways into the guest, the images share (9p, what cabin run
// uses) and a read-only virtio-blk disk of the image's ext4 block image;
// reading the image's files through each; QEMU's PSS with 10 containers
// of the image against 1; and the agent's RSS with 10 running.
func benchRunImage(ctx context.Context, e *env, o options, t *table) error {
	cabin := filepath.Join(o.bin, "cabin")
	if _, err := os.Stat(cabin); err != nil {
		return fmt.Errorf("cabin not found beside cabin-bench (run make build): %w", err)
	}
	tarPath := filepath.Join(e.dir, "runimg.tar")
	if err := writeRunImage(tarPath); err != nil {
		return err
	}
	digest, err := importRunImage(ctx, e, tarPath)
	if err != nil {
		return err
	}
	// The block image is built by the store itself, from the same tree.
	store, err := ociimage.Open(ctx, filepath.Join(e.dir, "blkstore"), ociimage.Options{})
	if err != nil {
		return err
	}
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	_, err = store.ImportFile(ctx, f, ociimage.ImportOptions{})
	f.Close()
	if err != nil {
		return err
	}
	block, err := store.BlockImage(ctx, runImageTag)
	if err != nil {
		return err
	}
	for _, req := range []*cabinv1.StartVmRequest{
		{Request: &concierge.StartVmRequest{Name: runImageVM, Cpus: benchCPUs}, MemoryMib: benchMemoryMiB},
		{Request: &concierge.StartVmRequest{Name: runImageBlkVM, Cpus: benchCPUs, Disks: []*concierge.DiskImage{{
			Path: block, ImageType: concierge.DiskImageType_DISK_IMAGE_RAW, Writable: false,
			DoMount: true, MountPoint: blkLower, Fstype: "ext4", Flags: unix.MS_RDONLY,
		}}}, MemoryMib: benchMemoryMiB},
	} {
		if err := startWithStorage(ctx, e, req); err != nil {
			return fmt.Errorf("start %s: %w", req.GetRequest().GetName(), err)
		}
		defer concierge.NewVmConciergeClient(e.cc).StopVm(ctx, &concierge.StopVmRequest{Name: req.GetRequest().GetName()})
	}
	echo, err := rawEcho(ctx, e)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	defer echo.close()

	cli := &rpcTarget{name: "cabin run", call: func() error {
		cmd := exec.CommandContext(ctx, cabin, "run", "--rm", "--vm", runImageVM, runImageTag, "true")
		cmd.Env = append(os.Environ(), "CABIN_SOCKET="+filepath.Join(e.dir, "cabind.sock"))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}}
	hex := strings.TrimPrefix(digest, "sha256:")
	n := 0
	lifecycle := func(vm, share, lower string) *rpcTarget {
		return &rpcTarget{name: vm, call: func() error {
			n++
			return runRunImageContainer(ctx, e, vm, fmt.Sprintf("b%d", n), share, lower, "true")
		}}
	}
	p9 := lifecycle(runImageVM, "cabinImages", "/run/cabin/images/"+hex)
	blk := lifecycle(runImageBlkVM, "", blkLower)
	for _, tg := range []*rpcTarget{cli, p9, blk} { // warm: first mounts, page cache
		if err := tg.call(); err != nil {
			return fmt.Errorf("%s: %w", tg.name, err)
		}
	}
	got, err := interleave(runImageRuns, echo, cli, p9, blk)
	if err != nil {
		return err
	}
	base := median(got[0])
	t.add(row{metric: "run image: cabin run --rm IMAGE true on a warm VM", value: median(got[1]),
		baseline: "raw 64-byte echo, same run", base: base,
		detail: fmt.Sprintf("cabin run %s, echo %s", spread(got[1]), spread(got[0]))})
	t.add(row{metric: "run image: container create→start→wait→remove, image over 9p (chosen)", value: median(got[2]),
		baseline: "the same, image on a virtio-blk ext4 disk", base: median(got[3]),
		detail: fmt.Sprintf("9p %s, virtio-blk %s", spread(got[2]), spread(got[3]))})

	// Reading the image's files, guest caches dropped before each. A
	// container in each VM keeps its image mounted meanwhile, as the
	// agent unmounts a storage its last container no longer uses.
	for _, h := range []struct{ vm, share, lower string }{
		{runImageVM, "cabinImages", "/run/cabin/images/" + hex}, {runImageBlkVM, "", blkLower},
	} {
		if err := startRunImageContainer(ctx, e, h.vm, "holder", h.share, h.lower, "sleep", "100000"); err != nil {
			return err
		}
		defer kata.NewAgentServiceClient(e.cc).RemoveContainer(toVM(context.WithoutCancel(ctx), h.vm), &kata.RemoveContainerRequest{ContainerId: "holder", Timeout: 10})
	}
	read := func(vm, dir string) (time.Duration, error) {
		start := time.Now()
		_, err := execIO(ctx, e.cc, vm, nil, "sh", "-c",
			`echo 3 > /proc/sys/vm/drop_caches && cat "$1/big" > /dev/null && cat "$1"/small/* > /dev/null`, "sh", dir)
		return time.Since(start), err
	}
	var r9, rb []time.Duration
	for i := 0; i < 3; i++ {
		d, err := read(runImageVM, "/run/cabin/images/"+hex)
		if err != nil {
			return fmt.Errorf("9p read: %w", err)
		}
		r9 = append(r9, d)
		if d, err = read(runImageBlkVM, blkLower); err != nil {
			return fmt.Errorf("virtio-blk read: %w", err)
		}
		rb = append(rb, d)
	}
	t.add(row{metric: fmt.Sprintf("run image: read the image's files (%d MiB + %d small), 9p", runImageBig>>20, runImageSmall),
		value: median(r9), baseline: "the same through virtio-blk ext4", base: median(rb),
		detail: fmt.Sprintf("9p %s, virtio-blk %s", spread(r9), spread(rb))})
	return benchRunImageMemory(ctx, e, hex, t)
}

// benchRunImageMemory measures QEMU's PSS and the agent's RSS with one
// running container of the image, then with runImageDense.
func benchRunImageMemory(ctx context.Context, e *env, hex string, t *table) error {
	info, err := concierge.NewVmConciergeClient(e.cc).GetVmInfo(ctx, &concierge.GetVmInfoRequest{Name: runImageVM})
	if err != nil {
		return err
	}
	pid := int(info.GetVmInfo().GetPid())
	agent := kata.NewAgentServiceClient(e.cc)
	var ids []string
	defer func() {
		for _, id := range ids {
			agent.RemoveContainer(toVM(context.WithoutCancel(ctx), runImageVM), &kata.RemoveContainerRequest{ContainerId: id, Timeout: 10})
		}
	}()
	measure := func() (qemuPSS, agentRSS int64, err error) {
		time.Sleep(2 * time.Second) // let page faults and frees settle
		if qemuPSS, err = pss(pid); err != nil {
			return 0, 0, err
		}
		status, err := execIO(ctx, e.cc, runImageVM, nil, "cat", "/proc/1/status")
		if err != nil {
			return 0, 0, err
		}
		agentRSS, err = vmRSS(bytes.NewReader(status))
		return qemuPSS, agentRSS, err
	}
	var pss1, rss1 int64
	for i := 0; i < runImageDense; i++ {
		id := fmt.Sprintf("dense%d", i)
		if err := startRunImageContainer(ctx, e, runImageVM, id, "cabinImages", "/run/cabin/images/"+hex, "sleep", "100000"); err != nil {
			return err
		}
		ids = append(ids, id)
		if i == 0 {
			if pss1, rss1, err = measure(); err != nil {
				return err
			}
		}
	}
	pss10, rss10, err := measure()
	if err != nil {
		return err
	}
	// One copy of the image for all: ten containers may cost the host
	// little more than one (their writable layers and processes are in
	// the guest's RAM, which QEMU has already).
	t.add(row{metric: fmt.Sprintf("run image: QEMU PSS with %d containers of one image", runImageDense), bytes: pss10, limit: pss1 + 16*mib,
		detail: fmt.Sprintf("%.1f MiB with 1: %.1f MiB a container more", float64(pss1)/mib, float64(pss10-pss1)/float64(runImageDense-1)/mib)})
	t.add(row{metric: fmt.Sprintf("run image: agent RSS with %d running containers", runImageDense), bytes: rss10, limit: 24 * mib,
		detail: fmt.Sprintf("%.1f MiB with 1", float64(rss1)/mib)})
	return nil
}

// runImageStorages are cabin run's storages for a container over lower,
// with the images share first when share names it.
func runImageStorages(id, share, lower string) []*kata.Storage {
	dir := "/run/cabin/containers/" + id
	var st []*kata.Storage
	if share != "" {
		st = append(st, &kata.Storage{Driver: "9p", Source: share, Fstype: "9p", MountPoint: "/run/cabin/images",
			Options: []string{"trans=virtio", "version=9p2000.L", "ro", "nodev"}})
	}
	return append(st,
		&kata.Storage{Driver: "ephemeral", Fstype: "tmpfs", Options: []string{"nodev", "mode=0700", "size=25%"}, MountPoint: dir},
		&kata.Storage{Driver: "local", Options: []string{"mode=0755"}, MountPoint: dir + "/upper"},
		&kata.Storage{Driver: "local", Options: []string{"mode=0700"}, MountPoint: dir + "/work"},
		&kata.Storage{Driver: "overlayfs", Fstype: "overlay", MountPoint: dir + "/rootfs",
			Options: []string{"lowerdir=" + lower, "upperdir=" + dir + "/upper", "workdir=" + dir + "/work"}})
}

// startRunImageContainer creates and starts container id running argv.
func startRunImageContainer(ctx context.Context, e *env, vm, id, share, lower string, argv ...string) error {
	ctx = toVM(ctx, vm)
	agent := kata.NewAgentServiceClient(e.cc)
	spec := &kata.Spec{
		Version: "1.2.0",
		Process: &kata.Process{Args: argv, Env: []string{"PATH=/bin"}, Cwd: "/", User: &kata.User{}},
		Root:    &kata.Root{Path: "/run/cabin/containers/" + id + "/rootfs"},
		Linux:   &kata.Linux{Namespaces: []*kata.LinuxNamespace{{Type: "pid"}, {Type: "mount"}, {Type: "ipc"}, {Type: "uts"}}},
		Mounts:  []*kata.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
	}
	if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id, ExecId: id, Storages: runImageStorages(id, share, lower), OCI: spec}); err != nil {
		return err
	}
	_, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id})
	return err
}

// runRunImageContainer is one container's life as cabin run --rm drives it:
// create, start, wait for its process, remove.
func runRunImageContainer(ctx context.Context, e *env, vm, id, share, lower string, argv ...string) error {
	if err := startRunImageContainer(ctx, e, vm, id, share, lower, argv...); err != nil {
		return err
	}
	vctx := toVM(ctx, vm)
	agent := kata.NewAgentServiceClient(e.cc)
	if _, err := agent.WaitProcess(vctx, &kata.WaitProcessRequest{ContainerId: id, ExecId: id}); err != nil {
		return err
	}
	_, err := agent.RemoveContainer(vctx, &kata.RemoveContainerRequest{ContainerId: id, Timeout: 10})
	return err
}

// writeRunImage writes a `docker save` tarball: the guest-independent
// busybox-static of the host (Debian's busybox-static), one large file
// and many small ones.
func writeRunImage(dst string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("the bench image is made of /bin/busybox (Debian's busybox-static): %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h *tar.Header, body []byte) {
		h.Size = int64(len(body))
		tw.WriteHeader(h)
		tw.Write(body)
	}
	for _, d := range []string{"bin/", "etc/", "proc/", "small/"} {
		add(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	}
	add(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755}, bb)
	for _, a := range []string{"sh", "true", "sleep", "cat"} {
		add(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox"}, nil)
	}
	add(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	big := make([]byte, runImageBig)
	rand.Read(big)
	add(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644}, big)
	small := make([]byte, 4096)
	for i := 0; i < runImageSmall; i++ {
		rand.Read(small)
		add(&tar.Header{Name: fmt.Sprintf("small/%04d", i), Typeflag: tar.TypeReg, Mode: 0o644}, small)
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tag, err := name.NewTag(runImageTag)
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err := tarball.Write(tag, img, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// importRunImage imports the tarball at path into the bench cabind's
// store, as cabin image import does, and returns its digest.
func importRunImage(ctx context.Context, e *env, path string) (string, error) {
	stream, err := cabinv1.NewOciImagesClient(e.cc).Import(ctx)
	if err != nil {
		return "", err
	}
	if err := stream.Send(&cabinv1.ImportOciImageMessage{Message: &cabinv1.ImportOciImageMessage_Header{Header: &cabinv1.ImportOciImageHeader{Path: path}}}); err != nil {
		return "", err
	}
	reply, err := stream.CloseAndRecv()
	if err != nil {
		return "", fmt.Errorf("import: %w", err)
	}
	if len(reply.GetImages()) != 1 {
		return "", fmt.Errorf("import: %d images", len(reply.GetImages()))
	}
	return reply.GetImages()[0].GetDigest(), nil
}

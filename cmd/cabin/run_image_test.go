package main

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/bootcfg"
)

// TestPlanProcess: the image's config and run's flags make the process as
// docker run makes it.
func TestPlanProcess(t *testing.T) {
	str := func(s string) *string { return &s }
	img := imageConfig{
		Entrypoint: []string{"/entry"}, Cmd: []string{"default", "args"},
		Env: []string{"PATH=/opt/bin", "A=image", "BROKEN"}, User: "app", WorkingDir: "work",
	}
	for _, c := range []struct {
		name       string
		img        imageConfig
		args       []string
		entrypoint *string
		env        map[string]string
		workdir    string
		user       string
		tty        bool
		want       processPlan
	}{
		{"entrypoint and cmd", img, nil, nil, nil, "", "", false, processPlan{
			argv: []string{"/entry", "default", "args"}, env: []string{"A=image", "HOSTNAME=c1", "PATH=/opt/bin"}, cwd: "/work", user: "app"}},
		{"CMD replaces cmd", img, []string{"x"}, nil, nil, "", "", false, processPlan{
			argv: []string{"/entry", "x"}, env: []string{"A=image", "HOSTNAME=c1", "PATH=/opt/bin"}, cwd: "/work", user: "app"}},
		{"--entrypoint drops cmd", img, nil, str("/other"), nil, "", "", false, processPlan{
			argv: []string{"/other"}, env: []string{"A=image", "HOSTNAME=c1", "PATH=/opt/bin"}, cwd: "/work", user: "app"}},
		{"--entrypoint '' and CMD", img, []string{"ls", "-l"}, str(""), nil, "", "", false, processPlan{
			argv: []string{"ls", "-l"}, env: []string{"A=image", "HOSTNAME=c1", "PATH=/opt/bin"}, cwd: "/work", user: "app"}},
		{"flags over the image", img, []string{"id"}, nil, map[string]string{"A": "flag", "B": "b"}, "/tmp/../srv", "0:0", true, processPlan{
			argv: []string{"/entry", "id"}, env: []string{"A=flag", "B=b", "HOSTNAME=c1", "PATH=/opt/bin", "TERM=xterm"}, cwd: "/srv", user: "0:0"}},
		{"no config", imageConfig{}, []string{"sh"}, nil, nil, "", "", false, processPlan{
			argv: []string{"sh"}, env: []string{"HOSTNAME=c1", "PATH=" + defaultPath}, cwd: "/"}},
	} {
		got, err := planProcess(c.img, c.args, c.entrypoint, c.env, c.workdir, c.user, "c1", c.tty)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !slices.Equal(got.argv, c.want.argv) || !slices.Equal(got.env, c.want.env) || got.cwd != c.want.cwd || got.user != c.want.user {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
	}
	if _, err := planProcess(imageConfig{}, nil, nil, nil, "", "", "c1", false); err == nil {
		t.Error("an image with no entrypoint or cmd and no CMD: no error")
	}
	if _, err := planProcess(imageConfig{Cmd: []string{"x"}, User: "a:b:c"}, nil, nil, nil, "", "", "c1", false); err == nil {
		t.Error("an image user a:b:c: no error")
	}
}

// TestBindMounts: --mount binds a path of one of the VM's shares from
// where the guest mounts it, read-only when the share is; a path in none
// is refused, naming the way to share it.
func TestBindMounts(t *testing.T) {
	vm := &cabinv1.Vm{Shares: []*cabinv1.VmShare{
		{Tag: bootcfg.RootfsTag, HostPath: "/var/lib/cabin/rootfs"}, // cabind's own
		{Tag: "cabinShare0", HostPath: "/home/u/src", GuestPath: "/src"},
		{Tag: "cabinShare1", HostPath: "/home/u/src/vendor", GuestPath: "/vendor", ReadOnly: true},
	}}
	for _, c := range []struct {
		spec mountSpec
		want *kata.Mount
	}{
		{mountSpec{src: "/home/u/src", dst: "/code"}, &kata.Mount{Destination: "/code", Type: "bind", Source: "/src", Options: []string{"rbind", "nosuid", "nodev"}}},
		{mountSpec{src: "/home/u/src/a/b", dst: "/b", ro: true}, &kata.Mount{Destination: "/b", Type: "bind", Source: "/src/a/b", Options: []string{"rbind", "nosuid", "nodev", "ro"}}},
		{mountSpec{src: "/home/u/src/vendor/x", dst: "/x"}, &kata.Mount{Destination: "/x", Type: "bind", Source: "/vendor/x", Options: []string{"rbind", "nosuid", "nodev", "ro"}}},
	} {
		got, err := bindMounts([]mountSpec{c.spec}, vm, "dev")
		if err != nil || len(got) != 1 || got[0].GetSource() != c.want.GetSource() || !slices.Equal(got[0].GetOptions(), c.want.GetOptions()) || got[0].GetDestination() != c.want.GetDestination() {
			t.Errorf("%+v: %v, %v; want %v", c.spec, got, err, c.want)
		}
	}
	for _, src := range []string{"/home/u/srcother", "/var/lib/cabin/rootfs/busybox", "/etc"} {
		if _, err := bindMounts([]mountSpec{{src: src, dst: "/x"}}, vm, "dev"); err == nil || !strings.Contains(err.Error(), "cabin vm start dev --share") {
			t.Errorf("%s: %v; want refused", src, err)
		}
	}
	if _, err := bindMounts([]mountSpec{{src: "/home/u/src", dst: "/x"}}, nil, "dev"); err == nil {
		t.Error("a VM with no shares took a mount")
	}
	m, err := parseMount("rel/dir:/in:ro")
	if abs, _ := filepath.Abs("rel/dir"); err != nil || m.src != abs || m.dst != "/in" || !m.ro {
		t.Errorf("parseMount of a relative SRC: %+v, %v", m, err)
	}
}

// fakeOciImages serves Inspect from a map of references.
type fakeOciImages struct {
	cabinv1.UnimplementedOciImagesServer
	images map[string]*cabinv1.OciImageDetails
}

func (f *fakeOciImages) Inspect(_ context.Context, req *cabinv1.InspectOciImageRequest) (*cabinv1.OciImageDetails, error) {
	if strings.Contains(req.GetReference(), "!") {
		return nil, status.Error(codes.InvalidArgument, "image: not a reference")
	}
	if d, ok := f.images[req.GetReference()]; ok {
		return d, nil
	}
	return nil, status.Errorf(codes.NotFound, "image %q: no such image", req.GetReference())
}

// startImageDaemon is startDaemon with an image store holding images.
func startImageDaemon(t *testing.T, images map[string]*cabinv1.OciImageDetails) *fakeDaemon {
	d := startDaemon(t)
	dir := filepath.Dir(d.socket)
	d.socket = filepath.Join(dir, "i.sock")
	lis, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	concierge.RegisterVmConciergeServer(srv, d.concierge)
	cabinv1.RegisterVmsServer(srv, d.vms)
	cabinv1.RegisterEventsServer(srv, d.events)
	cabinv1.RegisterImagesServer(srv, d.images)
	kata.RegisterAgentServiceServer(srv, d.agent)
	cabinv1.RegisterOciImagesServer(srv, &fakeOciImages{images: images})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return d
}

const testDigest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

func testImages() map[string]*cabinv1.OciImageDetails {
	return map[string]*cabinv1.OciImageDetails{"app:v1": {
		Image: &cabinv1.OciImage{Digest: testDigest, Tags: []string{"index.docker.io/library/app:v1"}},
		Config: &cabinv1.OciImageConfig{Entrypoint: []string{"/bin/app"}, Cmd: []string{"serve"},
			Env: []string{"PATH=/bin", "MODE=prod"}, User: "app:staff", WorkingDir: "/srv"},
	}}
}

// TestRunImageSpec: a container of an image of the store gets the image's
// process, an overlay over its tree in the images share, the annotations
// the agent reads, and the VM --vm names.
func TestRunImageSpec(t *testing.T) {
	d := startImageDaemon(t, testImages())
	d.agent.exit()
	before := time.Now().Add(-time.Second)
	r := d.run(t, nil, "run", "--vm", "web", "--name", "c1", "--rm", "app:v1", "check")
	if r.code != 0 {
		t.Fatalf("cabin run: %+v", r)
	}
	if got := d.agent.callList(); !slices.Equal(got, []string{"create", "start", "wait", "remove"}) {
		t.Errorf("calls %v", got)
	}
	req := d.agent.create
	p := req.GetOCI().GetProcess()
	if !slices.Equal(p.GetArgs(), []string{"/bin/app", "check"}) || p.GetCwd() != "/srv" || !slices.Contains(p.GetEnv(), "MODE=prod") {
		t.Errorf("process %v", p)
	}
	a := req.GetOCI().GetAnnotations()
	created, err := time.Parse(time.RFC3339Nano, a[kataAnnotationCreated])
	if a[kataAnnotationImage] != "app:v1" || a[kataAnnotationUser] != "app:staff" || err != nil || created.Before(before) {
		t.Errorf("annotations %v", a)
	}
	if _, ok := a[kataAnnotationLogs]; ok {
		t.Errorf("a foreground run keeps logs: %v", a)
	}
	st := req.GetStorages()
	lower := "lowerdir=" + imagesMount + "/" + strings.TrimPrefix(testDigest, "sha256:")
	if len(st) != 5 || st[0].GetSource() != bootcfg.ImagesTag || st[0].GetMountPoint() != imagesMount ||
		!slices.Contains(st[4].GetOptions(), lower) || req.GetOCI().GetRoot().GetPath() != st[4].GetMountPoint() {
		t.Errorf("storages %v, root %v", st, req.GetOCI().GetRoot())
	}
	if d.agent.vm != "web" {
		t.Errorf("relayed to %q", d.agent.vm)
	}
}

// TestRunDetached: -d starts the container and prints its id without
// waiting, asking the agent to keep its output, and with --rm to remove
// it at its end; without --rm a foreground container is kept.
func TestRunDetached(t *testing.T) {
	d := startImageDaemon(t, testImages())
	r := d.run(t, nil, "run", "-d", "--rm", "--vm", "web", "--name", "bg", "app:v1")
	if r.code != 0 || r.stdout != "bg\n" {
		t.Fatalf("cabin run -d: %+v", r)
	}
	if got := d.agent.callList(); !slices.Equal(got, []string{"create", "start"}) {
		t.Errorf("calls %v", got)
	}
	a := d.agent.create.GetOCI().GetAnnotations()
	if _, ok := a[kataAnnotationLogsMax]; a[kataAnnotationLogs] != "keep" || a[kataAnnotationAutoremove] != "true" || ok {
		t.Errorf("annotations %v", a)
	}
	// --log-max-size goes to the agent in bytes.
	d = startImageDaemon(t, testImages())
	if r := d.run(t, nil, "run", "-d", "--log-max-size", "8M", "--vm", "web", "--name", "bg", "app:v1"); r.code != 0 {
		t.Fatalf("cabin run -d --log-max-size: %+v", r)
	}
	if a := d.agent.create.GetOCI().GetAnnotations(); a[kataAnnotationLogsMax] != "8388608" {
		t.Errorf("annotations %v", a)
	}

	d = startImageDaemon(t, testImages())
	d.agent.exit()
	if r := d.run(t, nil, "run", "--vm", "web", "app:v1"); r.code != 0 {
		t.Fatalf("cabin run: %+v", r)
	}
	if got := d.agent.callList(); slices.Contains(got, "remove") {
		t.Errorf("calls %v: a container run without --rm was removed", got)
	}
}

// TestRunUnknownImage: an image the store lacks is refused before the VM
// is asked anything; busybox is the built-in root then; a VM's name given
// as the image says how the old form is spelt now.
func TestRunUnknownImage(t *testing.T) {
	d := startImageDaemon(t, testImages())
	d.vms.getVM = func(req *cabinv1.GetVmRequest) (*cabinv1.Vm, error) {
		if req.GetName() == "dev" {
			return &cabinv1.Vm{Name: "dev", State: cabinv1.VmState_VM_STATE_RUNNING}, nil
		}
		return nil, status.Error(codes.NotFound, "no VM named "+req.GetName())
	}
	r := d.run(t, nil, "run", "--vm", "web", "nosuch:v2", "true")
	if r.code != 1 || !strings.Contains(r.stderr, `no image "nosuch:v2"`) {
		t.Errorf("an unknown image: %+v", r)
	}
	r = d.run(t, nil, "run", "dev", "true")
	if r.code != exitUsage || !strings.Contains(r.stderr, "cabin run --vm dev busybox") {
		t.Errorf("a VM's name as the image: %+v", r)
	}
	r = d.run(t, nil, "run", "--vm", "web", "bad!ref", "true")
	if r.code != exitUsage {
		t.Errorf("a bad reference: %+v", r)
	}
	if calls := d.agent.callList(); len(calls) != 0 {
		t.Errorf("the agent was called: %v", calls)
	}
	d.agent.exit()
	if r := d.run(t, nil, "run", "--vm", "web", "--rm", "busybox", "true"); r.code != 0 {
		t.Fatalf("cabin run busybox: %+v", r)
	}
	if st := d.agent.create.GetStorages(); st[0].GetSource() != bootcfg.RootfsTag {
		t.Errorf("busybox storages %v", st)
	}
}

// TestRunDefaultVM: without --vm the VM "default" is started when it does
// not run, with its progress on standard error, before the container is
// made; --cpus above its vCPUs is refused.
func TestRunDefaultVM(t *testing.T) {
	d := startImageDaemon(t, testImages())
	running := false
	d.vms.getVM = func(req *cabinv1.GetVmRequest) (*cabinv1.Vm, error) {
		if req.GetName() != defaultVM || !running {
			return nil, status.Error(codes.NotFound, "no VM named "+req.GetName())
		}
		return &cabinv1.Vm{Name: defaultVM, State: cabinv1.VmState_VM_STATE_RUNNING, Cpus: 1}, nil
	}
	d.vms.startVM = func(req *cabinv1.StartVmRequest) (*concierge.StartVmResponse, error) {
		running = true
		return &concierge.StartVmResponse{Success: true, Status: concierge.VmStatus_VM_STATUS_RUNNING}, nil
	}
	d.agent.exit()
	r := d.run(t, nil, "run", "--rm", "app:v1")
	if r.code != 0 || r.stdout != "" {
		t.Fatalf("cabin run: %+v", r)
	}
	if calls := d.vms.calls(); len(calls) != 1 || calls[0].GetRequest().GetName() != defaultVM {
		t.Errorf("StartVm calls %v", calls)
	}
	if d.agent.vm != defaultVM {
		t.Errorf("relayed to %q", d.agent.vm)
	}
	if r := d.run(t, nil, "run", "--rm", "--cpus", "2", "app:v1"); r.code != exitUsage || !strings.Contains(r.stderr, "1 vCPUs") {
		t.Errorf("--cpus 2 on a 1-vCPU VM: %+v", r)
	}
	if calls := d.vms.calls(); len(calls) != 1 {
		t.Errorf("a running default VM was started again: %v", calls)
	}
}

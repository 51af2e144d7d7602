package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/cabinvm/cabin/api/vmtools"
)

const mebi = 1 << 20

// TestMaitredStorage runs StartTermina and the stateful disk's calls in
// a VM of its own, through cabind's relay, against a real disk: the host
// attaches no virtio-blk disk yet, so the test makes one in the guest, a
// loop device on a sparse file in its /tmp, and names it as the stateful
// device. Each effect is checked in the guest with its own tools.
func TestMaitredStorage(t *testing.T) {
	e := needEnv(t)
	vm := bootOwnVM(t, e, "cit-storage")
	c := vmtools.NewMaitredClient(e.cc)
	ctx := func(t *testing.T) context.Context { return toVM(testContext(t, 60*time.Second), vm.name) }
	run := func(t *testing.T, script string, args ...string) string {
		t.Helper()
		return mustExec(t, e, vm.name, append([]string{"sh", "-c", script, "sh"}, args...)...)
	}

	// loop is a late module: wait for it, then make the disk.
	dev := strings.TrimSpace(run(t, `i=0; while [ ! -e /dev/loop-control ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
d=$(losetup -f); i=0; while [ ! -b "$d" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
truncate -s 64M /tmp/stateful.img && losetup "$d" /tmp/stateful.img && echo "$d"`))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("loop device %q", dev)
	}

	// No tremplin in the image: the disk is formatted and mounted, and
	// the answer says what is missing.
	_, err := c.StartTermina(ctx(t), &vmtools.StartTerminaRequest{StatefulDevice: dev, LxdIpv4Subnet: "100.115.92.192/28"})
	wantCode(t, err, codes.FailedPrecondition, "tremplin", "is mounted on /mnt/stateful")
	if got := run(t, `grep " /mnt/stateful " /proc/mounts`); !strings.HasPrefix(got, dev+" /mnt/stateful ext4 rw,") || !strings.Contains(got, "discard") {
		t.Fatalf("/proc/mounts: %q, want %s as ext4 on /mnt/stateful", got, dev)
	}
	run(t, `echo kept > /mnt/stateful/kept`)

	// statfs in the guest: fundamental block size, blocks, free blocks
	// for users.
	fs := func(t *testing.T) (bsize, blocks, avail uint64) {
		t.Helper()
		f := strings.Fields(run(t, `stat -f -c "%S %b %a" /mnt/stateful`))
		if len(f) != 3 {
			t.Fatalf("stat -f: %q", f)
		}
		var v [3]uint64
		for i := range v {
			v[i], _ = strconv.ParseUint(f[i], 10, 64)
		}
		return v[0], v[1], v[2]
	}
	bsize, _, avail := fs(t)
	space, err := c.GetAvailableSpace(ctx(t), &vmtools.EmptyMessage{})
	if err != nil || space.GetAvailableSpace() != bsize*avail {
		t.Errorf("GetAvailableSpace = %v, %v; the guest's statfs says %d", space, err, bsize*avail)
	}
	bounds, err := c.GetResizeBounds(ctx(t), &vmtools.EmptyMessage{})
	if err != nil || bounds.GetMinimumSize() == 0 || bounds.GetMinimumSize() >= 64*mebi {
		t.Fatalf("GetResizeBounds = %v, %v", bounds, err)
	}
	t.Logf("minimum size of the new 64 MiB filesystem: %d bytes", bounds.GetMinimumSize())
	st, err := c.GetResizeStatus(ctx(t), &vmtools.EmptyMessage{})
	if err != nil || st.GetResizeInProgress() || st.GetCurrentSize() != 64*mebi {
		t.Errorf("GetResizeStatus = %v, %v", st, err)
	}

	// resize polls the status until the resize to size is over, and
	// checks the filesystem is that size and mounted, with its data.
	resize := func(t *testing.T, size uint64) {
		t.Helper()
		resp, err := c.ResizeFilesystem(ctx(t), &vmtools.ResizeFilesystemRequest{Size: size})
		if err != nil || resp.GetStatus() != vmtools.ResizeFilesystemResponse_STARTED {
			t.Fatalf("resize to %d = %v, %v; want STARTED", size, resp, err)
		}
		deadline := time.Now().Add(60 * time.Second)
		var st *vmtools.GetResizeStatusResponse
		for polls := 1; ; polls++ {
			st, err = c.GetResizeStatus(ctx(t), &vmtools.EmptyMessage{})
			if err != nil {
				t.Fatal(err)
			}
			if !st.GetResizeInProgress() {
				t.Logf("resize to %d MiB over after %d polls", size/mebi, polls)
				break
			}
			if st.GetTargetSize() != size {
				t.Errorf("status while resizing: %v", st)
			}
			if time.Now().After(deadline) {
				t.Fatalf("resize to %d still running after 60s", size)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if st.GetCurrentSize() != size {
			t.Errorf("after resizing to %d: %v", size, st)
		}
		if bsize, blocks, _ := fs(t); bsize*blocks > size || bsize*blocks < size*8/10 {
			t.Errorf("the guest's statfs sees %d bytes after resizing to %d", bsize*blocks, size)
		}
		if got := run(t, `cat /mnt/stateful/kept`); got != "kept\n" {
			t.Errorf("data after resizing: %q", got)
		}
	}

	t.Run("grow online", func(t *testing.T) {
		res, err := execArgs(testContext(t, 30*time.Second), e.cc, vm.name, "sh", "-c",
			`truncate -s 128M /tmp/stateful.img && losetup -c "$1"`, "sh", dev)
		if err != nil || res.code != 0 {
			t.Skipf("cannot grow the loop device in the guest (busybox losetup -c): %v, %s", err, res.stderr)
		}
		// A process holds the filesystem open throughout (launched by
		// Maitred: an exec's processes end with it), so the resize is
		// online or it is nothing.
		launch, err := c.LaunchProcess(ctx(t), &vmtools.LaunchProcessRequest{
			Argv: []string{"sh", "-c", "echo $$ > /tmp/holder.pid; exec sleep 60 < /mnt/stateful/kept"},
		})
		if err != nil || launch.GetStatus() != vmtools.ProcessStatus_LAUNCHED {
			t.Fatalf("LaunchProcess = %v, %v", launch, err)
		}
		run(t, `i=0; while [ ! -s /tmp/holder.pid ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; test -s /tmp/holder.pid`)
		resize(t, 128*mebi)
		// Still held: nothing unmounted it.
		run(t, `kill -0 "$(cat /tmp/holder.pid)"`)
	})

	t.Run("beyond the disk and below the minimum", func(t *testing.T) {
		for _, size := range []uint64{1 << 30, bounds.GetMinimumSize() / 2} {
			resp, err := c.ResizeFilesystem(ctx(t), &vmtools.ResizeFilesystemRequest{Size: size})
			if err != nil || resp.GetStatus() != vmtools.ResizeFilesystemResponse_FAILED {
				t.Errorf("resize to %d = %v, %v; want FAILED", size, resp, err)
			}
		}
	})

	t.Run("shrink", func(t *testing.T) {
		// Shrinking unmounts: nothing may hold the filesystem.
		run(t, `if [ -s /tmp/holder.pid ]; then p=$(cat /tmp/holder.pid); kill "$p"; i=0; while kill -0 "$p" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; fi`)
		resize(t, 48*mebi)
		if got := run(t, `grep -c " /mnt/stateful " /proc/mounts`); got != "1\n" {
			t.Errorf("mounts on /mnt/stateful after shrinking: %s", got)
		}
	})

	t.Run("storage balloon", func(t *testing.T) {
		bsize, _, avail := fs(t)
		free := bsize * avail
		resp, err := c.UpdateStorageBalloon(ctx(t), &vmtools.UpdateStorageBalloonRequest{
			State: vmtools.StatefulDiskSpaceState_DISK_NORMAL, FreeSpaceBytes: int64(1<<30 + free/2),
		})
		if err != nil || resp.GetResult() != vmtools.UpdateStorageBalloonResult_SUCCESS {
			t.Fatalf("UpdateStorageBalloon = %v, %v", resp, err)
		}
		if bsize, _, avail := fs(t); bsize*avail > free/2 || bsize*avail < free/2-1*mebi {
			t.Errorf("guest free %d after the balloon, want about %d", bsize*avail, free/2)
		}
		// The host with less than the headroom: the guest has nothing.
		if _, err := c.UpdateStorageBalloon(ctx(t), &vmtools.UpdateStorageBalloonRequest{FreeSpaceBytes: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		if _, _, avail := fs(t); avail != 0 {
			t.Errorf("guest free blocks %d with the host out of room", avail)
		}
		if _, err := c.UpdateStorageBalloon(ctx(t), &vmtools.UpdateStorageBalloonRequest{FreeSpaceBytes: 1 << 40}); err != nil {
			t.Fatal(err)
		}
		if bsize, _, avail := fs(t); bsize*avail < free-1*mebi {
			t.Errorf("guest free %d after the balloon deflated, want about %d", bsize*avail, free)
		}
	})
}

// TestMaitredShares: Mount9P mounts, over virtio-9p, the share its port
// names (tag cabinShare<port>). The host adds no share for Mount9P yet, so
// only the refusal of one that is not there can be seen: the real mount's
// errno, ENOENT, in the answer.
func TestMaitredShares(t *testing.T) {
	e := needEnv(t)
	c := vmtools.NewMaitredClient(e.cc)
	ctx := toVM(testContext(t, 30*time.Second), e.shared.name)
	resp, err := c.Mount9P(ctx, &vmtools.Mount9PRequest{Port: 4242, Target: "/mnt/cit-share"})
	if err != nil {
		t.Fatal(err)
	}
	if e := syscall.Errno(resp.GetError()); e != syscall.ENOENT {
		t.Errorf("Mount9P of a share the VM has not: %v, want ENOENT", e)
	}
	_, err = c.Mount9P(ctx, &vmtools.Mount9PRequest{Target: "/mnt/cit-share"})
	wantCode(t, err, codes.InvalidArgument, "port")
	t.Run("a share", func(t *testing.T) {
		t.Skip("the host adds no virtio-9p share for Mount9P yet (cabind's StartVm shares); internal/guest/maitred's TestMount9P checks the mount call")
	})
}

// TestMaitredContainerGuest: ConfigureContainerGuest writes garcon's token
// and link, and says garcon is missing.
func TestMaitredContainerGuest(t *testing.T) {
	e := needEnv(t)
	c := vmtools.NewMaitredClient(e.cc)
	ctx := toVM(testContext(t, 30*time.Second), e.shared.name)
	_, err := c.ConfigureContainerGuest(ctx, &vmtools.ConfigureContainerGuestRequest{ContainerToken: "cit-token"})
	wantCode(t, err, codes.FailedPrecondition, "garcon")
	if got := mustExec(t, e, e.shared.name, "cat", "/dev/.container_token"); got != "cit-token" {
		t.Errorf("/dev/.container_token: %q", got)
	}
	if got := mustExec(t, e, e.shared.name, "readlink", "/dev/.host_ip"); got != "/run/host_ip\n" {
		t.Errorf("/dev/.host_ip -> %q", got)
	}
}

// TestMaitredEveryMethod walks vm_tools.Maitred's descriptor and calls
// every method but Shutdown with an empty request on the shared VM,
// through cabind's relay: none answers UNIMPLEMENTED.
func TestMaitredEveryMethod(t *testing.T) {
	e := needEnv(t)
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName("vm_tools.Maitred")
	if err != nil {
		t.Fatal(err)
	}
	svc := desc.(protoreflect.ServiceDescriptor)
	for i := range svc.Methods().Len() {
		md := svc.Methods().Get(i)
		// Shutdown would stop the shared VM; SetResolvConfig with nothing
		// would empty its resolv.conf. Both are tested elsewhere.
		if md.Name() == "Shutdown" || md.Name() == "SetResolvConfig" {
			continue
		}
		t.Run(string(md.Name()), func(t *testing.T) {
			in, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
			if err != nil {
				t.Fatal(err)
			}
			out, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
			if err != nil {
				t.Fatal(err)
			}
			ctx := toVM(testContext(t, 30*time.Second), e.shared.name)
			err = e.cc.Invoke(ctx, fmt.Sprintf("/%s/%s", svc.FullName(), md.Name()), in.New().Interface(), out.New().Interface())
			if st := status.Convert(err); st.Code() == codes.Unimplemented {
				t.Fatalf("answers UNIMPLEMENTED: %s", st.Message())
			} else {
				t.Logf("%v %s", st.Code(), st.Message())
			}
		})
	}
}

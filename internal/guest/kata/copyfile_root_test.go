package kata

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	pb "github.com/cabinvm/cabin/api/kata"
)

// TestRootCopyFile copies into a real tmpfs storage, as root, in a child
// of its own (see runChild): files land with their mode and owner, and
// no path, planted symlink, size or chunk order gets a byte outside the
// storage or leaves one behind.
func TestRootCopyFile(t *testing.T) {
	subtests := []string{"chunks", "kinds", "confined", "sizes", "upstream"}
	if inChild("TestRootCopyFile") {
		childSetup(t)
		dir := testDir(t)
		vol := filepath.Join(dir, "vol")
		c := newClient(t, Config{Runtime: "/nonexistent", Bundles: t.TempDir(), RuntimeRoot: t.TempDir()})
		if _, err := c.CreateSandbox(t.Context(), &pb.CreateSandboxRequest{Storages: []*pb.Storage{
			{Driver: "ephemeral", MountPoint: vol, Options: []string{"size=4m"}},
		}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := c.DestroySandbox(context.Background(), &pb.DestroySandboxRequest{}); err != nil {
				t.Error(err)
			}
		})
		t.Run("chunks", func(t *testing.T) { testCopyChunks(t, c, vol) })
		t.Run("kinds", func(t *testing.T) { testCopyKinds(t, c, vol) })
		t.Run("confined", func(t *testing.T) { testCopyConfined(t, c, dir, vol) })
		t.Run("sizes", func(t *testing.T) { testCopySizes(t, c, vol) })
		t.Run("upstream", func(t *testing.T) { testCopyUpstreamDir(t, c) })
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a tmpfs storage and chowns files, in a mount namespace of its own")
	}
	runChild(t, "TestRootCopyFile", subtests)
}

// copyAll uploads data to path in chunks of size chunk, as Kata's runtime
// does.
func copyAll(t *testing.T, c pb.AgentServiceClient, path string, data []byte, chunk int, mode uint32, uid, gid int32) error {
	t.Helper()
	req := &pb.CopyFileRequest{Path: path, FileSize: int64(len(data)), FileMode: mode, DirMode: 0o750, Uid: uid, Gid: gid}
	if len(data) == 0 {
		_, err := c.CopyFile(t.Context(), req)
		return err
	}
	for off := 0; off < len(data); off += chunk {
		req.Offset, req.Data = int64(off), data[off:min(off+chunk, len(data))]
		if _, err := c.CopyFile(t.Context(), req); err != nil {
			return err
		}
	}
	return nil
}

// owner returns a file's uid, gid and permission bits, not following a
// symlink.
func owner(t *testing.T, p string) (uid, gid, perm uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid, st.Mode & 0o7777
}

// leftovers lists what CopyFile made aside and left in dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".cabin-copy-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func testCopyChunks(t *testing.T, c pb.AgentServiceClient, vol string) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80,000 bytes
	target := filepath.Join(vol, "a/b/file")
	// S_IFREG and set-uid: the type is dropped, the set-uid bit kept
	// (it survives the chown, which comes first).
	if err := copyAll(t, c, target, data, 32<<10, unix.S_IFREG|0o4751, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(target); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("%s: %d bytes, %v; want the %d sent", target, len(b), err, len(data))
	}
	if uid, gid, perm := owner(t, target); uid != 1234 || gid != 5678 || perm != 0o4751 {
		t.Errorf("%s: uid %d gid %d mode %o; want 1234 5678 4751", target, uid, gid, perm)
	}
	// Directories made on the way: dir_mode masked to 0777, the owner.
	for _, d := range []string{filepath.Join(vol, "a"), filepath.Join(vol, "a/b")} {
		if uid, gid, perm := owner(t, d); uid != 1234 || gid != 5678 || perm != 0o750 {
			t.Errorf("%s: uid %d gid %d mode %o; want 1234 5678 750", d, uid, gid, perm)
		}
	}
	// A second copy replaces the file; an empty file comes in one call.
	if err := copyAll(t, c, target, nil, 1, 0o600, -1, -1); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Size() != 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s after an empty copy: %v, %v", target, fi, err)
	}
	if l := leftovers(t, filepath.Dir(target)); len(l) != 0 {
		t.Errorf("left in %s: %v", filepath.Dir(target), l)
	}
}

func testCopyKinds(t *testing.T, c pb.AgentServiceClient, vol string) {
	ctx := t.Context()
	dir := filepath.Join(vol, "kinds/d")
	if _, err := c.CopyFile(ctx, &pb.CopyFileRequest{Path: dir, FileMode: unix.S_IFDIR | 0o1770, DirMode: 0o755, Uid: 7, Gid: 8}); err != nil {
		t.Fatal(err)
	}
	if uid, gid, perm := owner(t, dir); uid != 7 || gid != 8 || perm != 0o1770 {
		t.Errorf("%s: uid %d gid %d mode %o; want 7 8 1770", dir, uid, gid, perm)
	}
	link := filepath.Join(vol, "kinds/l")
	if _, err := c.CopyFile(ctx, &pb.CopyFileRequest{Path: link, FileMode: unix.S_IFLNK | 0o777, Data: []byte("/etc/passwd"), Uid: 9, Gid: 10}); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(link); err != nil || got != "/etc/passwd" {
		t.Errorf("%s -> %q, %v", link, got, err)
	}
	if uid, gid, _ := owner(t, link); uid != 9 || gid != 10 {
		t.Errorf("%s owned by %d:%d, want 9:10", link, uid, gid)
	}
	for _, tc := range []struct {
		req    *pb.CopyFileRequest
		prefix string
	}{
		{&pb.CopyFileRequest{Path: link, FileMode: unix.S_IFLNK}, "data: "},
		{&pb.CopyFileRequest{Path: link, FileMode: unix.S_IFLNK, Data: []byte("a\x00b")}, "data: "},
		{&pb.CopyFileRequest{Path: link, FileMode: unix.S_IFCHR | 0o666}, "file_mode: "},
		{&pb.CopyFileRequest{Path: link, FileMode: unix.S_IFIFO | 0o666}, "file_mode: "},
		{&pb.CopyFileRequest{Path: link, Uid: -2}, "uid: "},
		{&pb.CopyFileRequest{Path: link, Gid: -5}, "gid: "},
	} {
		_, err := c.CopyFile(ctx, tc.req)
		wantCode(t, tc.prefix, err, codes.InvalidArgument, tc.prefix)
	}
	// A file over a non-empty directory is refused, and the directory
	// stays.
	os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o644)
	err := copyAll(t, c, dir, []byte("file"), 10, 0o644, 0, 0)
	wantCode(t, "file over a directory", err, codes.FailedPrecondition, "copy to "+dir)
	if _, err := os.Stat(filepath.Join(dir, "keep")); err != nil {
		t.Errorf("the directory's file: %v", err)
	}
}

func testCopyConfined(t *testing.T, c pb.AgentServiceClient, dir, vol string) {
	ctx := t.Context()
	outside := filepath.Join(dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(outside)
	secret := filepath.Join(outside, "secret")
	os.WriteFile(secret, []byte("keep me"), 0o600)

	// Paths that are not clean, or not below an allowed directory.
	for _, p := range []string{
		vol + "/../outside/secret", vol + "/./x", vol + "//x", "x", "", secret, "/etc/cabin-copy-test", vol, "/run/kata-containers/shared/containers",
	} {
		_, err := c.CopyFile(ctx, &pb.CopyFileRequest{Path: p, FileSize: 3, Data: []byte("bad")})
		wantCode(t, "path "+p, err, codes.InvalidArgument, "path: ")
	}

	// Planted symlinks: a directory pointing out, one climbing out, and
	// the target itself pointing out. Each resolves inside the storage,
	// as if it were "/", and the target is replaced, not followed.
	os.Symlink(outside, filepath.Join(vol, "evil"))
	os.Symlink("../../../..", filepath.Join(vol, "up"))
	os.Symlink(secret, filepath.Join(vol, "target"))
	// evil's target is not in the storage yet: nothing to resolve to,
	// and no directory is made through it.
	err := copyAll(t, c, vol+"/evil/secret", []byte("copied"), 4, 0o644, 0, 0)
	wantCode(t, "through a dangling symlink", err, codes.FailedPrecondition, "copy to "+vol+"/evil/secret")
	if err := os.MkdirAll(vol+outside, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, lands string }{
		{vol + "/evil/secret", vol + outside + "/secret"},
		{vol + "/up/x", vol + "/x"},
		{vol + "/up/evil/y", vol + outside + "/y"},
		{vol + "/target", vol + "/target"},
	} {
		if err := copyAll(t, c, tc.path, []byte("copied"), 4, 0o644, 0, 0); err != nil {
			t.Errorf("copy to %s: %v", tc.path, err)
			continue
		}
		if b, err := os.ReadFile(tc.lands); err != nil || string(b) != "copied" {
			t.Errorf("copy to %s: %s reads %q, %v", tc.path, tc.lands, b, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(vol, "target")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("the planted symlink target: %v, %v; want a file in its place", fi, err)
	}
	if b, _ := os.ReadFile(secret); string(b) != "keep me" {
		t.Errorf("%s outside the storage reads %q", secret, b)
	}
	entries, _ := os.ReadDir(outside)
	if len(entries) != 1 {
		t.Errorf("outside the storage: %v", entries)
	}
}

func testCopySizes(t *testing.T, c pb.AgentServiceClient, vol string) {
	ctx := t.Context()
	dir := filepath.Join(vol, "sizes")
	os.Mkdir(dir, 0o755)
	p := filepath.Join(dir, "f")
	gone := func(what string) {
		t.Helper()
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s: %s exists (%v)", what, p, err)
		}
		if l := leftovers(t, dir); len(l) != 0 {
			t.Errorf("%s: left in %s: %v", what, dir, l)
		}
	}
	// More bytes than file_size, in one chunk and in two.
	_, err := c.CopyFile(ctx, &pb.CopyFileRequest{Path: p, FileSize: 4, Data: []byte("too long")})
	wantCode(t, "too long", err, codes.InvalidArgument, "data: ")
	gone("too long")
	req := &pb.CopyFileRequest{Path: p, FileSize: 10, Data: []byte("01234")}
	if _, err := c.CopyFile(ctx, req); err != nil {
		t.Fatal(err)
	}
	gone("half sent") // not there until complete
	req.Offset, req.Data = 5, []byte("56789xx")
	_, err = c.CopyFile(ctx, req)
	wantCode(t, "past the end", err, codes.InvalidArgument, "data: ")
	gone("past the end")

	// A gap, an overlap, and a size that changes: each drops the upload.
	for _, bad := range []*pb.CopyFileRequest{
		{Path: p, FileSize: 10, Offset: 7, Data: []byte("789")},
		{Path: p, FileSize: 10, Offset: 3, Data: []byte("3456789")},
		{Path: p, FileSize: 12, Offset: 5, Data: []byte("56789")},
		{Path: p, FileSize: 10, FileMode: 0o777, Offset: 5, Data: []byte("56789")},
	} {
		if _, err := c.CopyFile(ctx, &pb.CopyFileRequest{Path: p, FileSize: 10, Data: []byte("01234")}); err != nil {
			t.Fatal(err)
		}
		_, err := c.CopyFile(ctx, bad)
		wantCode(t, "bad chunk", err, codes.InvalidArgument, p+": upload dropped: ")
		gone("bad chunk")
		// The upload is gone: its proper next chunk finds none.
		_, err = c.CopyFile(ctx, &pb.CopyFileRequest{Path: p, FileSize: 10, Offset: 5, Data: []byte("56789")})
		wantCode(t, "after a bad chunk", err, codes.FailedPrecondition, "path "+p+": no upload in progress")
		gone("after a bad chunk")
	}
	_, err = c.CopyFile(ctx, &pb.CopyFileRequest{Path: p, FileSize: -1})
	wantCode(t, "negative size", err, codes.InvalidArgument, "file_size: ")
	_, err = c.CopyFile(ctx, &pb.CopyFileRequest{Path: p, FileSize: 1, Offset: -1})
	wantCode(t, "negative offset", err, codes.InvalidArgument, "offset: ")
	gone("negative numbers")

	// A file that does not fit the storage (4 MiB): refused, and nothing
	// of it left.
	big := make([]byte, 1<<20)
	req = &pb.CopyFileRequest{Path: p, FileSize: 8 << 20}
	for off := int64(0); ; off += int64(len(big)) {
		req.Offset, req.Data = off, big
		if _, err = c.CopyFile(ctx, req); err != nil {
			break
		}
	}
	wantCode(t, "full storage", err, codes.FailedPrecondition, "copy to "+p+": write: ")
	gone("full storage")
	var st unix.Statfs_t
	if unix.Statfs(vol, &st); st.Bfree*uint64(st.Bsize) < 3<<20 {
		t.Errorf("the storage has %d bytes free after the refused copy", st.Bfree*uint64(st.Bsize))
	}
}

func testCopyUpstreamDir(t *testing.T, c pb.AgentServiceClient) {
	// Upstream's directory, made on first use: on a tmpfs of this test's
	// own, in its mount namespace.
	const base = "/run/kata-containers"
	made := false
	if _, err := os.Stat(base); os.IsNotExist(err) {
		made = os.Mkdir(base, 0o755) == nil
	}
	if err := unix.Mount("tmpfs", base, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		unix.Unmount(base, unix.MNT_DETACH)
		if made {
			os.Remove(base)
		}
	}()
	p := kataShareDir + "/c1-abc-hostname"
	if err := copyAll(t, c, p, []byte("box\n"), 2, unix.S_IFREG|0o644, 0, 0); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "box\n" {
		t.Errorf("%s: %q, %v", p, b, err)
	}
}

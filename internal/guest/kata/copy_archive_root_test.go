package kata

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	pb "github.com/cabinvm/cabin/api/kata"
)

// TestArchiveCopies runs containers with the real cabin-runtime, as root,
// in a child of its own (see TestKeptContainers): trees copied in and out
// as tar streams through cabin.v1.Containers, and hostile archives.
func TestArchiveCopies(t *testing.T) {
	subtests := []string{"archive", "archive_hostile"}
	if inChild("TestArchiveCopies") {
		keptSuiteWith(t, subtests, map[string]func(*kept){
			"archive":         (*kept).testArchive,
			"archive_hostile": (*kept).testArchiveHostile,
		})
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs containers")
	}
	rtPath, rootfs := containerFixture(t)
	runChild(t, "TestArchiveCopies", subtests, runtimeEnv+"="+rtPath, rootfsEnv+"="+rootfs)
}

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
	uid              int
}

func tarOf(t *testing.T, es ...tarEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.uid}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return b.Bytes()
}

// archiveIn sends data after h in chunks, then closes; with cut set, it
// cancels the call after that many bytes instead, as a client that goes.
func (k *kept) archiveIn(h *containersv1.CopyInArchiveHeader, data []byte, cut int) (*containersv1.CopyInArchiveResponse, error) {
	ctx, cancel := context.WithCancel(k.ctx())
	defer cancel()
	stream, err := k.cs.CopyInArchive(ctx)
	if err != nil {
		return nil, err
	}
	stream.Send(&containersv1.CopyInArchiveRequest{Kind: &containersv1.CopyInArchiveRequest_Header{Header: h}})
	for sent := 0; sent < len(data); sent += 4096 {
		if cut > 0 && sent >= cut {
			cancel()
			return nil, context.Canceled
		}
		if err := stream.Send(&containersv1.CopyInArchiveRequest{Kind: &containersv1.CopyInArchiveRequest_Data{Data: data[sent:min(sent+4096, len(data))]}}); err != nil {
			break
		}
	}
	return stream.CloseAndRecv()
}

func (k *kept) archiveOut(id, p string) (map[string]*tar.Header, map[string]string, error) {
	stream, err := k.cs.CopyOutArchive(k.ctx(), &containersv1.CopyOutArchiveRequest{ContainerId: id, Path: p})
	if err != nil {
		return nil, nil, err
	}
	var b bytes.Buffer
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		b.Write(m.GetData())
	}
	hs, bodies := map[string]*tar.Header{}, map[string]string{}
	tr := tar.NewReader(&b)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return hs, bodies, nil
		}
		if err != nil {
			return nil, nil, err
		}
		body, _ := io.ReadAll(tr)
		hs[h.Name], bodies[h.Name] = h, string(body)
	}
}

func wantStatus(t *testing.T, what string, err error, code codes.Code, word string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.Contains(st.Message(), word) {
		t.Errorf("%s: %v (%q), want %v saying %q", what, st.Code(), st.Message(), code, word)
	}
}

// testArchive: a tree copied in by docker cp's rules (as a new name, into
// a directory, its contents only, as it is), owned by the container's
// root without archive and with set-id bits cleared; symlinks kept as
// links, hard links as links; the same tree copied back out.
func (k *kept) testArchive() {
	k.run("arc", false, "sleep")
	k.readUntil("arc", "arc", "ready")
	pid := k.list()["arc"].GetPid()
	ctrRoot := "/proc/" + strconv.Itoa(int(pid)) + "/root"
	site := tarOf(k.t,
		tarEntry{name: "site/", typ: tar.TypeDir, mode: 0o750, uid: 1234},
		tarEntry{name: "site/index.html", body: "<h1>hi</h1>", typ: tar.TypeReg, mode: 0o644, uid: 1234},
		tarEntry{name: "site/sub/run", body: "#!/bin/sh", typ: tar.TypeReg, mode: 0o4755, uid: 1234},
		tarEntry{name: "site/link", link: "/etc/passwd", typ: tar.TypeSymlink, mode: 0o777, uid: 1234},
		tarEntry{name: "site/hard", link: "site/index.html", typ: tar.TypeLink, mode: 0o644, uid: 1234},
	)
	res, err := k.archiveIn(&containersv1.CopyInArchiveHeader{ContainerId: "arc", Path: "/tmp/www", SourceName: "site"}, site, 0)
	if err != nil || res.GetEntries() != 5 {
		k.t.Fatalf("CopyInArchive as a new name: %v, %v", res, err)
	}
	www := ctrRoot + "/tmp/www"
	var st unix.Stat_t
	if err := unix.Lstat(www+"/sub/run", &st); err != nil || st.Mode&0o7777 != 0o755 || st.Uid != 0 {
		k.t.Errorf("sub/run: mode %o uid %d, %v; want 0755 (set-id cleared), root's", st.Mode&0o7777, st.Uid, err)
	}
	if l, err := os.Readlink(www + "/link"); err != nil || l != "/etc/passwd" {
		k.t.Errorf("link: %q, %v", l, err)
	}
	a, _ := os.Stat(www + "/index.html")
	b, _ := os.Stat(www + "/hard")
	if a == nil || b == nil || !os.SameFile(a, b) {
		k.t.Error("hard is not a hard link of index.html")
	}
	if fi, err := os.Stat(www); err != nil || fi.Mode().Perm() != 0o750 {
		k.t.Errorf("www: %v, %v", fi, err)
	}
	// -a, as root: owners and set-id bits kept; into an existing directory.
	if _, err := k.archiveIn(&containersv1.CopyInArchiveHeader{ContainerId: "arc", Path: "/tmp/www/", SourceName: "site", Archive: true, KeepSetId: true}, site, 0); err != nil {
		k.t.Fatal(err)
	}
	if err := unix.Lstat(www+"/site/sub/run", &st); err != nil || st.Mode&0o7777 != 0o4755 || st.Uid != 1234 {
		k.t.Errorf("-a: site/sub/run: mode %o uid %d, %v", st.Mode&0o7777, st.Uid, err)
	}
	// Contents only, merged into what is there; and a raw stream.
	more := tarOf(k.t, tarEntry{name: "site/", typ: tar.TypeDir, mode: 0o700}, tarEntry{name: "site/new", body: "n", typ: tar.TypeReg, mode: 0o600})
	if _, err := k.archiveIn(&containersv1.CopyInArchiveHeader{ContainerId: "arc", Path: "/tmp/www", SourceName: "site", ContentsOnly: true}, more, 0); err != nil {
		k.t.Fatal(err)
	}
	if _, err := k.archiveIn(&containersv1.CopyInArchiveHeader{ContainerId: "arc", Path: "/tmp"}, more, 0); err != nil {
		k.t.Fatal(err)
	}
	for _, p := range []string{www + "/new", www + "/index.html", ctrRoot + "/tmp/site/new"} {
		if _, err := os.Lstat(p); err != nil {
			k.t.Errorf("%v", err)
		}
	}
	if fi, _ := os.Stat(www); fi.Mode().Perm() != 0o750 {
		k.t.Errorf("www's mode changed by a merge: %v", fi.Mode())
	}
	hs, bodies, err := k.archiveOut("arc", "/tmp/www")
	if err != nil {
		k.t.Fatal(err)
	}
	if h := hs["www/link"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/etc/passwd" {
		k.t.Errorf("www/link out: %+v", h)
	}
	if hs["www/"] == nil || hs["www/site/sub/run"] == nil || hs["www/site/sub/run"].Uid != 1234 || bodies["www/sub/run"] != "#!/bin/sh" {
		k.t.Errorf("out: %v", bodies)
	}
	// One hard link of the pair carries the bytes, the other names it.
	if a, b := hs["www/hard"], hs["www/index.html"]; a == nil || b == nil || bodies["www/hard"]+bodies["www/index.html"] != "<h1>hi</h1>" ||
		(b.Typeflag != tar.TypeLink || b.Linkname != "www/hard") {
		k.t.Errorf("hard links out: %+v %+v", a, b)
	}
	k.remove("arc")
}

// testArchiveHostile: each refused archive leaves no trace in the
// container, and nothing lands in the agent's own files.
func (k *kept) testArchiveHostile() {
	k.run("harc", false, "sleep")
	k.readUntil("harc", "harc", "ready")
	pid := k.list()["harc"].GetPid()
	ctrTmp := "/proc/" + strconv.Itoa(int(pid)) + "/root/tmp"
	if err := os.Symlink(k.dir, ctrTmp+"/esc"); err != nil {
		k.t.Fatal(err)
	}
	before, _ := os.ReadDir(k.dir)
	file := func(name string) tarEntry { return tarEntry{name: name, body: "x", typ: tar.TypeReg, mode: 0o644} }
	var many []tarEntry
	for i := range 100001 {
		many = append(many, tarEntry{name: "m/" + strconv.Itoa(i), typ: tar.TypeReg, mode: 0o644})
	}
	big := tarOf(k.t, file("a"), tarEntry{name: "b", body: strings.Repeat("b", 64<<10), typ: tar.TypeReg, mode: 0o644})
	raw := func(p string) *containersv1.CopyInArchiveHeader {
		return &containersv1.CopyInArchiveHeader{ContainerId: "harc", Path: p}
	}
	for _, tc := range []struct {
		what string
		h    *containersv1.CopyInArchiveHeader
		data []byte
		code codes.Code
		word string
	}{
		{"..", raw("/tmp"), tarOf(k.t, file("a"), file("../../escape")), codes.InvalidArgument, ".."},
		{"absolute", raw("/tmp"), tarOf(k.t, file("/etc/passwd")), codes.InvalidArgument, "absolute"},
		{"symlink then file", raw("/tmp"), tarOf(k.t, tarEntry{name: "l", link: k.dir, typ: tar.TypeSymlink}, file("l/planted")), codes.InvalidArgument, "symlink"},
		{"hard link to /etc/shadow", raw("/tmp"), tarOf(k.t, tarEntry{name: "s", link: "/etc/shadow", typ: tar.TypeLink}), codes.InvalidArgument, "absolute"},
		{"hard link up", raw("/tmp"), tarOf(k.t, tarEntry{name: "s", link: "../../etc/shadow", typ: tar.TypeLink}), codes.InvalidArgument, ".."},
		{"device", raw("/tmp"), tarOf(k.t, tarEntry{name: "mem", typ: tar.TypeChar, mode: 0o666}), codes.InvalidArgument, "device"},
		{"entries", raw("/tmp"), tarOf(k.t, many...), codes.ResourceExhausted, "100000 entries"},
		{"truncated", raw("/tmp"), big[:20000], codes.InvalidArgument, "middle"},
		{"through a planted symlink", raw("/tmp/esc"), tarOf(k.t, file("planted")), codes.NotFound, ""},
		{"read-only root", raw("/"), tarOf(k.t, file("planted")), codes.FailedPrecondition, ""},
		{"first entry not the source", &containersv1.CopyInArchiveHeader{ContainerId: "harc", Path: "/tmp/x", SourceName: "src"}, tarOf(k.t, file("other")), codes.InvalidArgument, "source_name"},
		{"directory onto a file", &containersv1.CopyInArchiveHeader{ContainerId: "harc", Path: "/prog", SourceName: "d"}, tarOf(k.t, tarEntry{name: "d/", typ: tar.TypeDir, mode: 0o755}), codes.FailedPrecondition, "onto a file"},
		{"source name with a slash", &containersv1.CopyInArchiveHeader{ContainerId: "harc", Path: "/tmp", SourceName: "a/b"}, tarOf(k.t, file("a/b")), codes.InvalidArgument, "source_name"},
		{"relative path", raw("tmp"), tarOf(k.t, file("a")), codes.InvalidArgument, "path"},
		{"no container", &containersv1.CopyInArchiveHeader{ContainerId: "nobody", Path: "/tmp"}, tarOf(k.t, file("a")), codes.NotFound, ""},
		{"empty archive", raw("/tmp"), nil, codes.InvalidArgument, "no entry"},
	} {
		_, err := k.archiveIn(tc.h, tc.data, 0)
		wantStatus(k.t, tc.what, err, tc.code, tc.word)
		if ents, _ := os.ReadDir(ctrTmp); len(ents) != 1 {
			k.t.Errorf("%s: left in the container's /tmp: %v", tc.what, ents)
		}
	}
	// A client that goes mid-stream: the staging directory goes too (the
	// agent notices once the stream's end reaches it).
	k.archiveIn(raw("/tmp"), big, 8192)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ents, _ := os.ReadDir(ctrTmp)
		if len(ents) == 1 {
			break
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("left after a disconnect: %v", ents)
		}
	}
	if after, _ := os.ReadDir(k.dir); len(after) != len(before) {
		k.t.Errorf("the agent's directory changed: %v, was %v", after, before)
	}
	_, _, err := k.archiveOut("harc", "/tmp/esc/x")
	wantStatus(k.t, "CopyOutArchive through a planted symlink", err, codes.NotFound, "")
	hs, _, err := k.archiveOut("harc", "/tmp/esc")
	if err != nil || len(hs) != 1 || hs["esc"].Typeflag != tar.TypeSymlink {
		k.t.Errorf("CopyOutArchive of a symlink: %v, %v; want the link alone", hs, err)
	}
	if _, err := k.c.SignalProcess(k.ctx(), &pb.SignalProcessRequest{ContainerId: "harc", Signal: 9}); err != nil {
		k.t.Fatal(err)
	}
	k.wait("harc", "")
	_, err = k.archiveIn(raw("/tmp"), tarOf(k.t, file("a")), 0)
	wantStatus(k.t, "CopyInArchive into a stopped container", err, codes.FailedPrecondition, "stopped")
	k.remove("harc")
}

// keptSuiteWith is keptSuite with tests of its own.
func keptSuiteWith(t *testing.T, subtests []string, tests map[string]func(*kept)) {
	childSetup(t)
	tmp := t.TempDir()
	h := &ctr{rootfs: os.Getenv(rootfsEnv), dir: testDir(t), bundles: filepath.Join(tmp, "bundles")}
	sb := New(Config{Log: testLog(), Reaper: childReaper, Runtime: os.Getenv(runtimeEnv),
		RuntimeRoot: filepath.Join(tmp, "runtime"), Bundles: h.bundles})
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	pb.RegisterAgentServiceServer(srv, NewService(sb))
	containersv1.RegisterContainersServer(srv, NewContainersService(sb))
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	h.c = pb.NewAgentServiceClient(conn)
	cs := containersv1.NewContainersClient(conn)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := h.c.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
			t.Errorf("destroy the sandbox: %v", err)
		}
		conn.Close()
		srv.Stop()
		removeCgroups(t)
	})
	for _, name := range subtests {
		t.Run(name, func(t *testing.T) {
			hh := *h
			hh.t = t
			tests[name](&kept{ctr: &hh, cs: cs})
		})
	}
}

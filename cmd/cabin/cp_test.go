package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/internal/tarcopy"
)

// The fake agents' archive calls: an agent in a VM whose name starts with
// "old" lacks them, as agents before them did. Files are fakeCtr.files;
// a directory is a prefix of their names (and /, /tmp, /etc always).
// CopyOutArchive of a path with a "tar:"+path file serves that file's
// bytes as the archive, for hostile archives.

var archiveHeaders struct {
	mu   sync.Mutex
	last map[*fakeCtr]*containersv1.CopyInArchiveHeader
}

func fakeIsDir(c *fakeCtr, p string) bool {
	if p == "/" || p == "/tmp" || p == "/etc" {
		return true
	}
	for f := range c.files {
		if strings.HasPrefix(f, p+"/") {
			return true
		}
	}
	return false
}

func (s *hostContainers) CopyInArchive(stream containersv1.Containers_CopyInArchiveServer) error {
	g, err := s.h.guest(stream.Context())
	if err != nil {
		return err
	}
	if strings.HasPrefix(g.name, "old") {
		return status.Error(codes.Unimplemented, "unknown method CopyInArchive")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	var data bytes.Buffer
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		data.Write(m.GetData())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	c, err := g.ctr(h.GetContainerId())
	if err != nil {
		return err
	}
	archiveHeaders.mu.Lock()
	if archiveHeaders.last == nil {
		archiveHeaders.last = map[*fakeCtr]*containersv1.CopyInArchiveHeader{}
	}
	archiveHeaders.last[c] = h
	archiveHeaders.mu.Unlock()
	dest := path.Clean(h.GetPath())
	rename := tarcopy.Rename{}
	if h.GetSourceName() != "" {
		place, err := tarcopy.Place(tarcopy.Dest{Exists: fakeIsDir(c, dest) || c.files[dest] != nil, IsDir: fakeIsDir(c, dest),
			TrailingSlash: strings.HasSuffix(h.GetPath(), "/")}, true, h.GetContentsOnly())
		if err != nil {
			return status.Error(codes.FailedPrecondition, err.Error())
		}
		rename = tarcopy.For(place, h.GetSourceName(), path.Base(dest))
		if place == tarcopy.AsDest {
			dest = path.Dir(dest)
		}
	}
	tr := tar.NewReader(&data)
	n := int64(0)
	for {
		th, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if th.Typeflag != tar.TypeReg {
			continue
		}
		name := strings.TrimSuffix(th.Name, "/")
		if rename.Top != "" {
			if rest, ok := strings.CutPrefix(name, rename.Top+"/"); ok && rename.Strip {
				name = rest
			} else if ok {
				name = rename.As + "/" + rest
			} else if name == rename.Top {
				name = rename.As
			}
		}
		b, _ := io.ReadAll(tr)
		c.files[path.Join(dest, name)] = b
		n++
	}
	return stream.SendAndClose(&containersv1.CopyInArchiveResponse{Entries: n})
}

func (s *hostContainers) CopyOutArchive(req *containersv1.CopyOutArchiveRequest, stream containersv1.Containers_CopyOutArchiveServer) error {
	g, err := s.h.guest(stream.Context())
	if err != nil {
		return err
	}
	if strings.HasPrefix(g.name, "old") {
		return status.Error(codes.Unimplemented, "unknown method CopyOutArchive")
	}
	g.mu.Lock()
	c, err := g.ctr(req.GetContainerId())
	var b bytes.Buffer
	p := path.Clean(req.GetPath())
	if c != nil {
		if raw, ok := c.files["tar:"+p]; ok {
			b.Write(raw)
		} else if f, ok := c.files[p]; ok {
			tw := tar.NewWriter(&b)
			tw.WriteHeader(&tar.Header{Name: path.Base(p), Typeflag: tar.TypeReg, Mode: 0o640, Size: int64(len(f))})
			tw.Write(f)
			tw.Close()
		} else if fakeIsDir(c, p) {
			tw := tar.NewWriter(&b)
			tw.WriteHeader(&tar.Header{Name: path.Base(p) + "/", Typeflag: tar.TypeDir, Mode: 0o755})
			var names []string
			for f := range c.files {
				if strings.HasPrefix(f, p+"/") {
					names = append(names, f)
				}
			}
			sort.Strings(names)
			for _, f := range names {
				tw.WriteHeader(&tar.Header{Name: path.Base(p) + "/" + strings.TrimPrefix(f, p+"/"), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(c.files[f]))})
				tw.Write(c.files[f])
			}
			tw.Close()
		} else {
			err = status.Errorf(codes.NotFound, "%s: no such file", p)
		}
	}
	g.mu.Unlock()
	if err != nil {
		return err
	}
	for data := b.Bytes(); len(data) > 0; {
		n := min(len(data), 1000)
		if err := stream.Send(&containersv1.CopyOutArchiveResponse{Data: data[:n]}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func lastArchiveHeader(c *fakeCtr) *containersv1.CopyInArchiveHeader {
	archiveHeaders.mu.Lock()
	defer archiveHeaders.mu.Unlock()
	return archiveHeaders.last[c]
}

func TestCpDirs(t *testing.T) {
	h := startHost(t)
	dev := h.vm("dev")
	c := dev.add("web", ctrRunning)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
	os.WriteFile(filepath.Join(tree, "a"), []byte("A"), 0o644)
	os.WriteFile(filepath.Join(tree, "sub", "b"), []byte("B"), 0o644)

	if r := h.run(t, nil, "cp", tree, "web:/srv/www"); r.code != 0 {
		t.Fatalf("cp DIR CTR:/new: %+v", r)
	}
	if hd := lastArchiveHeader(c); hd.GetSourceName() != "tree" || hd.GetContentsOnly() || hd.GetArchive() || hd.GetPath() != "/srv/www" {
		t.Errorf("header %v", hd)
	}
	dev.mu.Lock()
	got := string(c.files["/srv/www/a"]) + string(c.files["/srv/www/sub/b"])
	dev.mu.Unlock()
	if got != "AB" {
		t.Errorf("the tree in the container: %q", got)
	}
	if r := h.run(t, nil, "cp", "-a", tree+"/.", "web:/tmp"); r.code != 0 {
		t.Fatalf("cp -a DIR/. CTR:/dir: %+v", r)
	}
	if hd := lastArchiveHeader(c); !hd.GetContentsOnly() || !hd.GetArchive() || hd.GetKeepSetId() != (os.Geteuid() == 0) {
		t.Errorf("header of -a DIR/.: %v", hd)
	}
	var stream bytes.Buffer
	tw := tar.NewWriter(&stream)
	tw.WriteHeader(&tar.Header{Name: "raw", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3})
	tw.Write([]byte("raw"))
	tw.Close()
	if r := h.run(t, bytes.NewReader(stream.Bytes()), "cp", "-", "web:/tmp"); r.code != 0 {
		t.Fatalf("cp - CTR:/dir: %+v", r)
	}
	if hd := lastArchiveHeader(c); hd.GetSourceName() != "" || string(c.files["/tmp/raw"]) != "raw" {
		t.Errorf("cp -: header %v, file %q", hd, c.files["/tmp/raw"])
	}

	// Out: a new directory, a tar stream, a file's bytes.
	out := filepath.Join(dir, "out")
	if r := h.run(t, nil, "cp", "web:/srv/www", out); r.code != 0 {
		t.Fatalf("cp CTR:/dir NEW: %+v", r)
	}
	a, _ := os.ReadFile(filepath.Join(out, "a"))
	b, _ := os.ReadFile(filepath.Join(out, "sub", "b"))
	if string(a)+string(b) != "AB" {
		t.Errorf("out: %q %q", a, b)
	}
	r := h.run(t, nil, "cp", "web:/srv/www", "-")
	tr := tar.NewReader(strings.NewReader(r.stdout))
	var names []string
	for {
		th, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, th.Name)
	}
	if r.code != 0 || strings.Join(names, " ") != "www/ www/a www/sub/b" {
		t.Errorf("cp CTR:/dir -: %+v, entries %v", r.code, names)
	}
	if r := h.run(t, nil, "cp", "web:/srv/www/a", "-"); r.code != 0 || r.stdout != "A" {
		t.Errorf("cp CTR:/file -: %+v", r)
	}
	// A directory onto a local file, a file into a missing directory.
	os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644)
	for _, args := range [][]string{{"cp", "web:/srv/www", filepath.Join(dir, "plain")}, {"cp", "web:/srv/www/a", filepath.Join(dir, "missing") + "/"}} {
		if r := h.run(t, nil, args...); r.code != exitFailure {
			t.Errorf("%v: %+v; want refused", args, r)
		}
	}
}

// TestCpHostileArchive: what an agent sends is checked on the host as the
// agent checks what it is sent: nothing lands outside the destination,
// and a refused archive leaves nothing.
func TestCpHostileArchive(t *testing.T) {
	h := startHost(t)
	c := h.vm("dev").add("web", ctrRunning)
	outside := t.TempDir()
	mk := func(hs ...*tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, th := range hs {
			if th.Typeflag == tar.TypeReg {
				th.Size = 1
			}
			tw.WriteHeader(th)
			if th.Typeflag == tar.TypeReg {
				tw.Write([]byte("x"))
			}
		}
		tw.Close()
		return b.Bytes()
	}
	c.files["tar:/dotdot"] = mk(&tar.Header{Name: "dotdot/", Typeflag: tar.TypeDir}, &tar.Header{Name: "dotdot/../../" + filepath.Base(outside) + "/x", Typeflag: tar.TypeReg})
	c.files["tar:/link"] = mk(&tar.Header{Name: "link/", Typeflag: tar.TypeDir}, &tar.Header{Name: "link/l", Typeflag: tar.TypeSymlink, Linkname: outside}, &tar.Header{Name: "link/l/x", Typeflag: tar.TypeReg})
	c.files["tar:/hard"] = mk(&tar.Header{Name: "hard/", Typeflag: tar.TypeDir}, &tar.Header{Name: "hard/h", Typeflag: tar.TypeLink, Linkname: "/etc/shadow"})
	c.files["tar:/other"] = mk(&tar.Header{Name: "other/", Typeflag: tar.TypeDir}, &tar.Header{Name: "elsewhere", Typeflag: tar.TypeReg})
	for _, p := range []string{"/dotdot", "/link", "/hard", "/other"} {
		dst := t.TempDir()
		if r := h.run(t, nil, "cp", "web:"+p, filepath.Join(dst, "x")); r.code != exitFailure || r.stderr == "" {
			t.Errorf("%s: %+v; want refused", p, r)
		}
		if ents, _ := os.ReadDir(dst); len(ents) != 0 {
			t.Errorf("%s: left %v", p, ents)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("written outside: %v", ents)
	}
}

// TestCpOldAgent: a VM whose agent predates the archive calls still
// copies single files, and says what to do for a directory.
func TestCpOldAgent(t *testing.T) {
	h := startHost(t)
	old := h.vm("old-vm")
	c := old.add("legacy", ctrRunning)
	dir := t.TempDir()
	src := filepath.Join(dir, "f")
	os.WriteFile(src, []byte("file"), 0o644)
	if r := h.run(t, nil, "cp", src, "legacy:/tmp/"); r.code != 0 || string(c.files["/tmp/f"]) != "file" {
		t.Fatalf("cp FILE to an old agent: %+v", r)
	}
	if r := h.run(t, nil, "cp", "legacy:/tmp/f", "-"); r.code != 0 || r.stdout != "file" {
		t.Errorf("cp out of an old agent: %+v", r)
	}
	if r := h.run(t, nil, "cp", dir, "legacy:/tmp/d"); r.code != exitFailure || !strings.Contains(r.stderr, "restart the VM") {
		t.Errorf("cp DIR to an old agent: %+v", r)
	}
}

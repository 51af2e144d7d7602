package hostinfo

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cabinvm/cabin/internal/guestimage"
	"github.com/cabinvm/cabin/internal/hypervisor"
)

func TestBinaryVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	dir := t.TempDir()
	main := filepath.Join(dir, "main.go")
	if err := os.WriteFile(main, []byte("package main\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "agent")
	cmd := exec.Command("go", "build", "-o", bin, "-ldflags", "-s -w "+versionFlag+"v1.2.3-4-gabc", main)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if v, err := BinaryVersion(bin); err != nil || v != "v1.2.3-4-gabc" {
		t.Errorf("BinaryVersion = %q, %v; want v1.2.3-4-gabc", v, err)
	}
	// A -trimpath build has no -ldflags in its build information: the
	// binary's own --version answers.
	asks := filepath.Join(dir, "asks")
	if err := os.MkdirAll(asks, 0o755); err != nil {
		t.Fatal(err)
	}
	src := "package main\nimport (\"fmt\"; \"os\")\nfunc main() { if len(os.Args) == 2 && os.Args[1] == \"--version\" { fmt.Println(\"cabin-agent v7.0.1\") } }\n"
	if err := os.WriteFile(filepath.Join(asks, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	trimmed := filepath.Join(dir, "trimmed")
	cmd = exec.Command("go", "build", "-trimpath", "-o", trimmed, "-ldflags", "-s -w "+versionFlag+"ignored", "main.go")
	cmd.Dir = asks
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if v, err := BinaryVersion(trimmed); err != nil || v != "v7.0.1" {
		t.Errorf("BinaryVersion of a -trimpath build = %q, %v; want what it says to --version", v, err)
	}
	if _, err := BinaryVersion(main); err == nil {
		t.Error("a Go source file read as a binary")
	}
	if _, err := BinaryVersion(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file has a version")
	}
}

func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a"), make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	// A sparse file of 1 GiB holding nothing counts (next to) nothing.
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 30)
	f.Close()
	if got := DiskUsage(dir); got < 64<<10 || got > 1<<20 {
		t.Errorf("DiskUsage = %d, want about 64 KiB", got)
	}
	if got := DiskUsage(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("DiskUsage of a missing dir = %d", got)
	}
}

func TestSource(t *testing.T) {
	dir := t.TempDir()
	// A QEMU that only knows --version.
	fake := filepath.Join(dir, "qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'QEMU emulator version 7.2.99 (test)'\necho 'Copyright'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	built := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	s := &Source{
		QEMUBinary: fake, Accel: hypervisor.AccelTCG, AccelReason: "cpu lacks vmx/svm",
		StateDir: dir, ImageDir: dir, Network: "user",
		Image: func() (guestimage.Image, time.Time, bool) {
			return guestimage.Image{KernelVersion: "6.1.0-57-amd64 (6.1.192-3)", InitramfsBytes: 30 << 20}, built, true
		},
		Running: func() int { return 3 },
	}
	in := s.Info(context.Background())
	if in.QEMUVersion != "QEMU emulator version 7.2.99 (test)" || in.QEMUBinary != fake {
		t.Errorf("qemu %q %q", in.QEMUBinary, in.QEMUVersion)
	}
	if in.Accel != hypervisor.AccelTCG || in.AccelReason != "cpu lacks vmx/svm" || in.Network != "user" || in.Running != 3 {
		t.Errorf("info %+v", in)
	}
	if in.StateTotal == 0 || in.StateFree > in.StateTotal {
		t.Errorf("state dir space %d of %d", in.StateFree, in.StateTotal)
	}
	if in.ImageKernel != "6.1.0-57-amd64 (6.1.192-3)" || !in.ImageBuiltAt.Equal(built) || in.ImageCacheBytes == 0 {
		t.Errorf("image %q %v %d", in.ImageKernel, in.ImageBuiltAt, in.ImageCacheBytes)
	}
	if in.HostKernel == "" || in.HostCPUs < 1 || in.HostMemory == 0 {
		t.Errorf("host %q %d %d", in.HostKernel, in.HostCPUs, in.HostMemory)
	}
	if _, err := os.Stat("/dev/vhost-vsock"); err != nil && (in.VhostVsock || !strings.Contains(in.VhostVsockReason, "vhost-vsock")) {
		t.Errorf("no /dev/vhost-vsock here, yet %v %q", in.VhostVsock, in.VhostVsockReason)
	}
	v := s.Version(context.Background())
	if v.GuestKernel != in.ImageKernel || v.QEMU != in.QEMUVersion || v.Cabind == "" || v.Go == "" {
		t.Errorf("version %+v", v)
	}
	// A QEMU that is not there: no version, no failure.
	s2 := &Source{QEMUBinary: filepath.Join(dir, "none"), StateDir: filepath.Join(dir, "gone")}
	if in := s2.Info(context.Background()); in.QEMUVersion != "" || in.StateTotal != 0 {
		t.Errorf("missing qemu and state dir: %+v", in)
	}
}

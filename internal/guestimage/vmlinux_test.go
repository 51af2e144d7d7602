package guestimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cabinvm/cabin/internal/errdefs"
)

// bzImage wraps payload in a minimal bzImage: a boot sector and setup
// sectors with the header fields the extractor reads, then protected-mode
// code holding the payload at payloadOff, followed by the 4-byte size the
// kernel build appends.
func bzImage(setupSects byte, version uint16, payloadOff int, payload []byte) []byte {
	sects := int(setupSects)
	if sects == 0 {
		sects = 4
	}
	pm := (sects + 1) * 512
	img := make([]byte, pm+payloadOff+len(payload)+4)
	img[bzSetupSects] = setupSects
	copy(img[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(img[bzVersion:], version)
	binary.LittleEndian.PutUint32(img[bzPayloadOffset:], uint32(payloadOff))
	binary.LittleEndian.PutUint32(img[bzPayloadLength:], uint32(len(payload)))
	copy(img[pm+payloadOff:], payload)
	binary.LittleEndian.PutUint32(img[pm+payloadOff+len(payload):], 0xdeadbeef)
	return img
}

// xzKernel compresses like the kernel build does: x86 BCJ filter, CRC32.
func xzKernel(t *testing.T, data []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz not installed (xz-utils): cannot build an xz bzImage payload")
	}
	cmd := exec.Command("xz", "-c", "--check=crc32", "--x86", "--lzma2=preset=6")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz: %v", err)
	}
	return out
}

func gzipBytes(data []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(data)
	zw.Close()
	return b.Bytes()
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExtractVmlinux(t *testing.T) {
	kernel := pvhELF(true)
	for _, tc := range []struct {
		name    string
		sects   byte
		payload func(t *testing.T) []byte
	}{
		{"xz with BCJ", 27, func(t *testing.T) []byte { return xzKernel(t, kernel) }},
		{"gzip, setup_sects 0 means 4", 0, func(*testing.T) []byte { return gzipBytes(kernel) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := writeFile(t, "vmlinuz", bzImage(tc.sects, 0x020f, 0x3a1, tc.payload(t)))
			dst := filepath.Join(t.TempDir(), "vmlinux")
			if err := ExtractVmlinux(context.Background(), src, dst); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, kernel) {
				t.Fatalf("extracted %d bytes, differ from the %d-byte kernel", len(got), len(kernel))
			}
			if err := CheckKernel(dst); err != nil {
				t.Errorf("CheckKernel(extracted vmlinux): %v", err)
			}
			if err := CheckKernel(src); err != nil {
				t.Errorf("CheckKernel(bzImage): %v", err)
			}
		})
	}
}

func TestExtractVmlinuxErrors(t *testing.T) {
	good := gzipBytes(pvhELF(true))
	valid := bzImage(1, 0x020f, 0, good)
	for _, tc := range []struct {
		name  string
		image []byte
		want  string
	}{
		{"not a bzImage", bytes.Repeat([]byte{0x90}, 4096), `no "HdrS"`},
		{"too short", []byte("MZ"), "shorter than the boot header"},
		{"old protocol", bzImage(1, 0x0206, 0, good), "older than 2.08"},
		{"truncated", valid[:len(valid)-len(good)/2], "truncated"},
		{"unknown compression", bzImage(1, 0x020f, 0, append([]byte("BZh91AY&SY"), make([]byte, 64)...)), "unknown payload compression"},
		{"no PVH note", bzImage(1, 0x020f, 0, gzipBytes(pvhELF(false))), "no Xen PVH entry note"},
		{"payload not ELF", bzImage(1, 0x020f, 0, gzipBytes([]byte("just text"))), "not an ELF file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := writeFile(t, "vmlinuz", tc.image)
			outDir := t.TempDir()
			err := ExtractVmlinux(context.Background(), src, filepath.Join(outDir, "vmlinux"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
			if left, _ := os.ReadDir(outDir); len(left) != 0 {
				t.Errorf("failed extraction left %d files behind", len(left))
			}
		})
	}
}

func TestCheckKernelAndInitramfs(t *testing.T) {
	dir := t.TempDir()
	var cpio bytes.Buffer
	cw := newCPIOWriter(&cpio)
	cw.File("/init", 0o755, 2, strings.NewReader("hi"))
	cw.Close()
	files := map[string][]byte{
		"pvh.elf":     pvhELF(true),
		"nopvh.elf":   pvhELF(false),
		"bzImage":     bzImage(1, 0x020f, 0, gzipBytes(pvhELF(true))),
		"text":        []byte("hello, this is not a kernel or an archive at all"),
		"initrd.cpio": cpio.Bytes(),
		"initrd.gz":   gzipBytes(cpio.Bytes()),
		"initrd.zst":  {0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0},
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	for _, tc := range []struct {
		check func(string) error
		path  string
		want  error // nil: accepted
	}{
		{CheckKernel, p("pvh.elf"), nil},
		{CheckKernel, p("bzImage"), nil},
		{CheckKernel, p("nopvh.elf"), errdefs.ErrInvalidArgument},
		{CheckKernel, p("text"), errdefs.ErrInvalidArgument},
		{CheckKernel, p("initrd.cpio"), errdefs.ErrInvalidArgument},
		{CheckKernel, dir, errdefs.ErrInvalidArgument},
		{CheckKernel, p("missing"), errdefs.ErrNotFound},
		{CheckKernel, "", errdefs.ErrInvalidArgument},
		{CheckInitramfs, p("initrd.cpio"), nil},
		{CheckInitramfs, p("initrd.gz"), nil},
		{CheckInitramfs, p("initrd.zst"), nil},
		{CheckInitramfs, p("text"), errdefs.ErrInvalidArgument},
		{CheckInitramfs, p("pvh.elf"), errdefs.ErrInvalidArgument},
		{CheckInitramfs, dir, errdefs.ErrInvalidArgument},
		{CheckInitramfs, p("missing"), errdefs.ErrNotFound},
	} {
		err := tc.check(tc.path)
		if tc.want == nil && err != nil {
			t.Errorf("%s: rejected: %v", filepath.Base(tc.path), err)
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", filepath.Base(tc.path), err, tc.want)
		}
	}
}

package main

import (
	"io"
	"strings"
	"testing"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func TestImageBuild(t *testing.T) {
	d := startDaemon(t)
	var force bool
	d.images.build = func(req *cabinv1.BuildImageRequest, stream cabinv1.Images_BuildServer) error {
		force = req.GetForce()
		for _, step := range []string{"fetch linux-image-amd64", "extract vmlinux", "write initramfs"} {
			if err := stream.Send(&cabinv1.BuildImageProgress{Step: step}); err != nil {
				return err
			}
		}
		return stream.Send(&cabinv1.BuildImageProgress{Step: "done", Image: &cabinv1.ImageInfo{
			KernelVersion: "6.1.0-56-amd64 (6.1.192-2)", InitrdBytes: 24 << 20, Built: true}})
	}
	r := d.run(t, nil, "image", "build", "--force")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	if !force {
		t.Error("--force was not sent")
	}
	if r.stderr != "fetch linux-image-amd64\nextract vmlinux\nwrite initramfs\ndone\n" {
		t.Errorf("stderr = %q, want the steps", r.stderr)
	}
	if r.stdout != "image built: kernel 6.1.0-56-amd64 (6.1.192-2), initramfs 24 MiB\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
}

func TestImageBuildWithoutResult(t *testing.T) {
	d := startDaemon(t)
	d.images.build = func(_ *cabinv1.BuildImageRequest, stream cabinv1.Images_BuildServer) error {
		return stream.Send(&cabinv1.BuildImageProgress{Step: "thinking"})
	}
	r := d.run(t, nil, "image", "build")
	if r.code != 1 || r.stdout != "" {
		t.Errorf("got %+v, want a failure", r)
	}
}

func TestImageSummaryCached(t *testing.T) {
	got := imageSummary(&cabinv1.ImageInfo{KernelVersion: "6.1.0-56-amd64", InitrdBytes: 1536 << 10})
	if got != "image cached: kernel 6.1.0-56-amd64, initramfs 1.5 MiB" {
		t.Errorf("imageSummary = %q", got)
	}
}

// downloadBuild is a build whose one download of 10 MiB comes in quarters.
func downloadBuild(_ *cabinv1.BuildImageRequest, stream cabinv1.Images_BuildServer) error {
	const total = 10 << 20
	msgs := []*cabinv1.BuildImageProgress{{Step: "downloading linux-image-6.1.0-56-amd64 6.1.192-2"}}
	for done := int64(0); done <= total; done += total / 4 {
		msgs = append(msgs, &cabinv1.BuildImageProgress{Step: "downloading linux-image-6.1.0-56-amd64 6.1.192-2", DoneBytes: done, TotalBytes: total})
	}
	msgs = append(msgs, &cabinv1.BuildImageProgress{Step: "building the initramfs"},
		&cabinv1.BuildImageProgress{Step: "done", Image: &cabinv1.ImageInfo{KernelVersion: "6.1.0-56-amd64 (6.1.192-2)", Built: true}})
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	return nil
}

// TestImageBuildDownloadLines: off a terminal, a download is a line at
// every tenth, with its size.
func TestImageBuildDownloadLines(t *testing.T) {
	d := startDaemon(t)
	d.images.build = downloadBuild
	r := d.run(t, nil, "image", "build")
	if r.code != 0 {
		t.Fatalf("exit code %d, stderr:\n%s", r.code, r.stderr)
	}
	const dl = "downloading linux-image-6.1.0-56-amd64 6.1.192-2"
	want := dl + "\n" +
		dl + ": 0% of 10 MiB\n" + dl + ": 25% of 10 MiB\n" + dl + ": 50% of 10 MiB\n" + dl + ": 75% of 10 MiB\n" + dl + ": 100% of 10 MiB\n" +
		"building the initramfs\ndone\n"
	if r.stderr != want {
		t.Errorf("stderr =\n%s\nwant\n%s", r.stderr, want)
	}
}

// TestImageBuildDownloadBar: on a terminal, the download is a bar that
// counts bytes.
func TestImageBuildDownloadBar(t *testing.T) {
	ptmx, tty, _ := openTerminal(t)
	d := startDaemon(t)
	d.images.build = downloadBuild
	var screen syncBuffer
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(&screen, ptmx)
	}()
	var stdout syncBuffer
	code := run(t.Context(), []string{"--socket", d.socket, "image", "build"}, strings.NewReader(""), &stdout, tty, func(string) string { return "" })
	if code != 0 {
		t.Fatalf("exit code %d, screen:\n%s", code, screen.String())
	}
	tty.Close()
	<-copied
	s := screen.String()
	for _, want := range []string{"downloading linux-image-6.1.0-56-amd64", "MB", "%", "building the initramfs"} {
		if !strings.Contains(s, want) {
			t.Errorf("terminal shows %q, want %q in it", s, want)
		}
	}
	if strings.Contains(s, "25% of 10 MiB") {
		t.Errorf("terminal shows the plain lines, not a bar: %q", s)
	}
}

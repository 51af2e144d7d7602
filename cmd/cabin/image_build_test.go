package main

import (
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

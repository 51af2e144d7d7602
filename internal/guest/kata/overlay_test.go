package kata

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cabinvm/cabin/internal/errdefs"
)

func TestOverlaySpec(t *testing.T) {
	const mp = "/run/c/1/rootfs"
	ok := []struct {
		name string
		opts []string
		want mountSpec
	}{
		{"writable", []string{"lowerdir=/run/images/a", "upperdir=/run/c/1/upper", "workdir=/run/c/1/work", "nodev"},
			mountSpec{source: "overlay", fstype: "overlay", flags: unix.MS_NODEV, data: "lowerdir=/run/images/a,upperdir=/run/c/1/upper,workdir=/run/c/1/work"}},
		{"read-only, two lowers", []string{"ro", "lowerdir=/run/a:/run/b", "index=off", "volatile"},
			mountSpec{source: "overlay", fstype: "overlay", flags: unix.MS_RDONLY, data: "lowerdir=/run/a:/run/b,index=off,volatile"}},
	}
	for _, c := range ok {
		got, err := Storage{Driver: DriverOverlay, Options: c.opts, MountPoint: mp}.spec("storages[0]")
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
	for _, c := range []struct {
		name   string
		fstype string
		opts   []string
	}{
		{"no lower", "", []string{"upperdir=/run/u", "workdir=/run/w"}},
		{"one lower, no upper", "", []string{"lowerdir=/run/a"}},
		{"upper without work", "", []string{"lowerdir=/run/a", "upperdir=/run/u"}},
		{"work inside upper", "", []string{"lowerdir=/run/a", "upperdir=/run/u", "workdir=/run/u/w"}},
		{"outside /run", "", []string{"lowerdir=/etc", "upperdir=/run/u", "workdir=/run/w"}},
		{"climbing", "", []string{"lowerdir=/run/../etc", "upperdir=/run/u", "workdir=/run/w"}},
		{"relative", "", []string{"lowerdir=run/a", "upperdir=/run/u", "workdir=/run/w"}},
		{"a comma smuggles an option", "", []string{"lowerdir=/run/a,upperdir=/etc", "upperdir=/run/u", "workdir=/run/w"}},
		{"an escape", "", []string{`lowerdir=/run/a\:b`, "upperdir=/run/u", "workdir=/run/w"}},
		{"empty lower", "", []string{"lowerdir=/run/a::/run/b"}},
		{"lower inside the mount point", "", []string{"lowerdir=/run/c/1/rootfs/x", "upperdir=/run/u", "workdir=/run/w"}},
		{"unknown option", "", []string{"lowerdir=/run/a", "upperdir=/run/u", "workdir=/run/w", "userxattr"}},
		{"bad value", "", []string{"lowerdir=/run/a", "upperdir=/run/u", "workdir=/run/w", "index=maybe"}},
		{"lowerdir twice", "", []string{"lowerdir=/run/a:/run/b", "lowerdir=/run/c"}},
		{"fstype", "ext4", []string{"lowerdir=/run/a", "upperdir=/run/u", "workdir=/run/w"}},
	} {
		_, err := Storage{Driver: DriverOverlay, FSType: c.fstype, Options: c.opts, MountPoint: mp}.spec("storages[0]")
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v; want invalid argument", c.name, err)
		}
	}
}

// FuzzOverlayOptions: whatever a client sends as an overlay's options,
// what reaches mount(2) names only directories below /run and no option
// beyond those checked.
func FuzzOverlayOptions(f *testing.F) {
	f.Add("lowerdir=/run/a", "upperdir=/run/u", "workdir=/run/w")
	f.Add("lowerdir=/run/a:/run/b", "ro", "index=off")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		spec, err := Storage{Driver: DriverOverlay, Options: []string{a, b, c}, MountPoint: "/run/m"}.spec("s")
		if err != nil {
			return
		}
		for _, o := range strings.Split(spec.data, ",") {
			key, value, _ := strings.Cut(o, "=")
			switch key {
			case "lowerdir", "upperdir", "workdir":
				for _, d := range strings.Split(value, ":") {
					if checkOverlayDir("f", key, d) != nil {
						t.Fatalf("%q passed with %q", o, spec.data)
					}
				}
			case "index", "xino", "redirect_dir", "metacopy", "volatile":
			default:
				t.Fatalf("option %q passed: %q", o, spec.data)
			}
		}
	})
}

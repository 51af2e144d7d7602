package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// vmStartStorage is what vm start attaches and shares: --disk, --share,
// --kernel-param, --start-termina.
type vmStartStorage struct {
	disks, shares, kernelParams []string
	startTermina                bool
}

func addStorageFlags(f *pflag.FlagSet, s *vmStartStorage) {
	f.StringArrayVar(&s.disks, "disk", nil, "attach the image PATH[:ro][,format=raw|qcow2][,mount=GUESTDIR[,fstype=TYPE]] (a path on the daemon's host; repeatable): "+
		"writable unless :ro; one of your disk images (cabin disk list) needs no format, any other file needs format=")
	f.StringArrayVar(&s.shares, "share", nil, "share the host folder HOSTDIR:GUESTDIR[:ro], mounted on GUESTDIR in the guest (repeatable)")
	f.StringArrayVar(&s.kernelParams, "kernel-param", nil, "add K or K=V to the guest kernel's command line, from cabin's allow-list (repeatable)")
	f.BoolVar(&s.startTermina, "start-termina", false, "run StartTermina at bring-up: mount the stateful disk on /mnt/stateful (done anyway when the VM has a disk image of its name)")
}

// apply puts the options into req.
func (s vmStartStorage) apply(req *cabinv1.StartVmRequest) error {
	for _, d := range s.disks {
		disk, err := parseDisk(d)
		if err != nil {
			return err
		}
		req.Request.Disks = append(req.Request.Disks, disk)
	}
	for _, sh := range s.shares {
		share, err := parseShare(sh)
		if err != nil {
			return err
		}
		req.Shares = append(req.Shares, share)
	}
	req.Request.KernelParams = s.kernelParams
	req.Request.StartTermina = s.startTermina
	return nil
}

// parseDisk reads --disk PATH[:ro][,format=raw|qcow2][,mount=DIR[,fstype=T]].
// A path is made absolute (the daemon does not share the CLI's working
// directory). Without a format, AUTO: the daemon takes an image of its
// store by its name, and refuses any other file.
func parseDisk(v string) (*concierge.DiskImage, error) {
	parts := strings.Split(v, ",")
	path, ro := strings.CutSuffix(parts[0], ":ro")
	if path == "" {
		return nil, usagef("--disk %q: no path", v)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("--disk %q: %w", v, err)
	}
	d := &concierge.DiskImage{Path: abs, Writable: !ro, ImageType: concierge.DiskImageType_DISK_IMAGE_AUTO}
	for _, kv := range parts[1:] {
		k, val, _ := strings.Cut(kv, "=")
		switch k {
		case "format":
			switch val {
			case "raw":
				d.ImageType = concierge.DiskImageType_DISK_IMAGE_RAW
			case "qcow2":
				d.ImageType = concierge.DiskImageType_DISK_IMAGE_QCOW2
			default:
				return nil, usagef("--disk %q: format must be raw or qcow2, got %q", v, val)
			}
		case "mount":
			d.DoMount, d.MountPoint = true, val
		case "fstype":
			d.Fstype = val
		default:
			return nil, usagef("--disk %q: unknown option %q (format=, mount=, fstype=)", v, k)
		}
	}
	if d.DoMount && d.Fstype == "" {
		d.Fstype = "ext4"
	}
	if !d.DoMount && d.Fstype != "" {
		return nil, usagef("--disk %q: fstype= needs mount=", v)
	}
	return d, nil
}

// parseShare reads --share HOSTDIR:GUESTDIR[:ro].
func parseShare(v string) (*cabinv1.Share, error) {
	rest, ro := strings.CutSuffix(v, ":ro")
	host, guest, ok := strings.Cut(rest, ":")
	if !ok || host == "" || guest == "" {
		return nil, usagef("--share %q: want HOSTDIR:GUESTDIR[:ro]", v)
	}
	abs, err := filepath.Abs(host)
	if err != nil {
		return nil, fmt.Errorf("--share %q: %w", v, err)
	}
	return &cabinv1.Share{HostPath: abs, GuestPath: guest, ReadOnly: ro}, nil
}

// writeVMStorage shows a VM's disks and shares under its info, none when
// it has none.
func writeVMStorage(w io.Writer, v *cabinv1.Vm) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	if len(v.GetDisks()) > 0 {
		fmt.Fprintln(tw, "\nDISK\tDEVICE\tFORMAT\tMODE\tMOUNT\tIMAGE")
		for _, d := range v.GetDisks() {
			mode := "rw"
			if d.GetReadOnly() {
				mode = "ro"
			}
			mount := orDash(d.GetMountPoint())
			if d.GetStateful() && mount == "-" {
				mount = "/mnt/stateful"
			}
			format := strings.ToLower(strings.TrimPrefix(d.GetImageType().String(), "DISK_IMAGE_"))
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.GetId(), d.GetDevice(), format, mode, mount, d.GetPath())
		}
	}
	if len(v.GetShares()) > 0 {
		fmt.Fprintln(tw, "\nSHARE\tMODE\tGUEST\tHOST")
		for _, s := range v.GetShares() {
			mode := "rw"
			if s.GetReadOnly() {
				mode = "ro"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.GetTag(), mode, orDash(s.GetGuestPath()), s.GetHostPath())
		}
	}
	return tw.Flush()
}

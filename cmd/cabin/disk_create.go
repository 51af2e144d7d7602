package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newDiskCreateCmd(g *globals) *cobra.Command {
	var (
		size, format, location string
		preallocate, sparse    bool
		ext4, asJSON           bool
		mkfsOpts, tune2fsOpts  []string
	)
	cmd := &cobra.Command{
		Use: "create NAME [--size SIZE] [--format raw|qcow2] [--preallocate|--sparse] [--ext4]",
		Example: "  cabin disk create data --size 10G --sparse --ext4\n" +
			"  cabin disk create scratch --size 2G --format qcow2",
		Short: "Create a disk image",
		Long: "create makes the disk image NAME: raw (the default) or qcow2, sparse or\n" +
			"preallocated (with no --size, cabind chooses 90% of its free space, sparse;\n" +
			"with one, preallocated unless --sparse), empty or holding an ext4 filesystem\n" +
			"(--ext4, with --mkfs-opt and --tune2fs-opt words, each checked). An image of\n" +
			"the name already there is left as it is and reported as existing.",
		Args: nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &concierge.CreateDiskImageRequest{CryptohomeId: g.owner, VmName: args[0]}
			if size != "" {
				n, err := parseSize(size)
				if err != nil {
					return err
				}
				req.DiskSize = n
			}
			switch format {
			case "raw":
				req.ImageType = concierge.DiskImageType_DISK_IMAGE_RAW
			case "qcow2":
				req.ImageType = concierge.DiskImageType_DISK_IMAGE_QCOW2
			default:
				return usagef("--format %q: want raw or qcow2", format)
			}
			switch {
			case preallocate && sparse:
				return usagef("--preallocate and --sparse together")
			case preallocate:
				req.AllocationType = concierge.DiskImageAllocationType_DISK_ALLOCATION_TYPE_PREALLOCATE
			case sparse:
				req.AllocationType = concierge.DiskImageAllocationType_DISK_ALLOCATION_TYPE_SPARSE
			}
			loc, err := storageLocation(location)
			if err != nil {
				return err
			}
			req.StorageLocation = loc
			if ext4 {
				req.FilesystemType = concierge.FilesystemType_EXT4
				req.MkfsOpts, req.Tune2FsOpts = mkfsOpts, tune2fsOpts
			} else if len(mkfsOpts)+len(tune2fsOpts) > 0 {
				return usagef("--mkfs-opt and --tune2fs-opt need --ext4")
			}
			return runDiskCreate(cmd, g, req, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&size, "size", "", "size in bytes, or with K, M, G, T (a multiple of 512)")
	f.StringVar(&format, "format", "raw", "raw or qcow2")
	f.BoolVar(&preallocate, "preallocate", false, "allocate all of it now")
	f.BoolVar(&sparse, "sparse", false, "allocate as it is written")
	f.BoolVar(&ext4, "ext4", false, "make an ext4 filesystem in it")
	f.StringArrayVar(&mkfsOpts, "mkfs-opt", nil, "a word for mkfs.ext4 (repeat: --mkfs-opt -b --mkfs-opt 4096)")
	f.StringArrayVar(&tune2fsOpts, "tune2fs-opt", nil, "a word for tune2fs (repeat)")
	f.StringVar(&location, "location", "root", "storage location: root or pluginvm")
	f.BoolVar(&asJSON, "json", false, "print concierge's response as JSON")
	return cmd
}

func runDiskCreate(cmd *cobra.Command, g *globals, req *concierge.CreateDiskImageRequest, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := concierge.NewVmConciergeClient(conn).CreateDiskImage(cmd.Context(), req)
	if err != nil {
		return fmt.Errorf("create disk %s: %w", req.GetVmName(), err)
	}
	if asJSON {
		if err := writeJSON(cmd.OutOrStdout(), resp); err != nil {
			return err
		}
	}
	switch resp.GetStatus() {
	case concierge.DiskImageStatus_DISK_STATUS_CREATED, concierge.DiskImageStatus_DISK_STATUS_EXISTS:
		if !asJSON {
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s\n", diskStatusWord(resp.GetStatus()), req.GetVmName(), resp.GetDiskPath())
		}
		return nil
	}
	return fmt.Errorf("create disk %s: %s: %s", req.GetVmName(), diskStatusWord(resp.GetStatus()), orUnknown(resp.GetFailureReason()))
}

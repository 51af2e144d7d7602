package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

func newDiskListCmd(g *globals) *cobra.Command {
	var (
		asJSON   bool
		location string
		name     string
		lf       listFormat
	)
	cmd := &cobra.Command{
		Use:     "list [--json | -q | --format TEMPLATE] [--location root|pluginvm] [--name NAME]",
		Aliases: []string{"ls"},
		Short:   "List the disk images",
		Long: "list shows the disk images of --owner in every location, or in --location\n" +
			"only: name, location, format, size, the least it can be resized to and its\n" +
			"path, then what all take on disk. With --json, concierge's ListVmDisksResponse;\n" +
			"-q prints the names only, --format a Go template on each of its images.",
		Example: "  cabin disk list --format '{{.Name}} {{.Size}}'",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := noArgs(cmd, args); err != nil {
				return err
			}
			return lf.check(asJSON)
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &concierge.ListVmDisksRequest{CryptohomeId: g.owner, VmName: name, AllLocations: location == ""}
			if location != "" {
				loc, err := storageLocation(location)
				if err != nil {
					return err
				}
				req.StorageLocation = loc
			}
			return runDiskList(cmd, g, req, asJSON, lf)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	lf.add(cmd.Flags())
	cmd.Flags().StringVar(&location, "location", "", "only this storage location: root or pluginvm")
	cmd.Flags().StringVar(&name, "name", "", "only the image of this name")
	return cmd
}

func runDiskList(cmd *cobra.Command, g *globals, req *concierge.ListVmDisksRequest, asJSON bool, lf listFormat) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := concierge.NewVmConciergeClient(conn).ListVmDisks(cmd.Context(), req)
	if err != nil {
		return fmt.Errorf("list disks: %w", err)
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("list disks: %s", orUnknown(resp.GetFailureReason()))
	}
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), resp)
	}
	if lf.set() {
		return writeFormatted(cmd.OutOrStdout(), lf, resp.GetImages(), (*concierge.VmDiskInfo).GetName)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tLOCATION\tFORMAT\tSIZE\tMIN\tPATH")
	var avail uint64
	for _, im := range resp.GetImages() {
		avail = im.GetAvailableSpace()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", im.GetName(),
			enumWord(im.GetStorageLocation().String(), "STORAGE_CRYPTOHOME_"),
			enumWord(im.GetImageType().String(), "DISK_IMAGE_"),
			formatBytes(int64(im.GetSize())), dash(int64(im.GetMinSize()), formatBytes), im.GetPath())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(resp.GetImages()) > 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "%s on disk in all, %s free\n", formatBytes(int64(resp.GetTotalSize())), formatBytes(int64(avail)))
	}
	return nil
}

package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// newVMUSBCmd is `cabin vm usb`: the host's USB devices passed to a VM
// started with --hotplug (concierge's AttachUsbDevice, DetachUsbDevice,
// ListUsbDevices).
func newVMUSBCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "usb",
		Short: "Pass the host's USB devices to a running VM",
		Long: "usb passes USB devices of cabind's host to a VM started with --hotplug, takes\n" +
			"them back, and lists them. A device is named on the host by its bus and port\n" +
			"(BUS-PORT, as /sys/bus/usb/devices names it), in the VM by its port.",
		Args: groupArgs,
		RunE: showHelp,
	}
	cmd.AddCommand(newVMUSBAttachCmd(g), newVMUSBDetachCmd(g), newVMUSBListCmd(g))
	return cmd
}

// parseBusPort reads BUS-PORT.
func parseBusPort(s string) (bus, port uint32, err error) {
	b, p, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, usagef("%q is not BUS-PORT", s)
	}
	bn, err1 := strconv.ParseUint(b, 10, 32)
	pn, err2 := strconv.ParseUint(p, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, usagef("%q is not BUS-PORT, two numbers", s)
	}
	return uint32(bn), uint32(pn), nil
}

func newVMUSBAttachCmd(g *globals) *cobra.Command {
	var vendor string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "attach VM BUS-PORT|/dev/bus/usb/BBB/DDD [--id VENDOR:PRODUCT] [--json]",
		Short: "Pass a host USB device to a VM",
		Long: "attach passes a USB device of cabind's host to the VM and prints the guest\n" +
			"port it is on: the device on port PORT of bus BUS (concierge's\n" +
			"AttachUsbDevice), or the device whose node is /dev/bus/usb/BBB/DDD on\n" +
			"cabind's host (cabin.v1's: any device, behind a hub too). cabind opens the\n" +
			"node as the caller, who must be allowed to read and write it. With BUS-PORT,\n" +
			"--id VENDOR:PRODUCT (hex) refuses any other device. --json prints\n" +
			"concierge's AttachUsbDeviceResponse.",
		Example: "  cabin vm usb attach dev 1-2\n  cabin vm usb attach dev 1-2 --id 0781:5583\n" +
			"  cabin vm usb attach dev /dev/bus/usb/001/004",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 || args[0] == "" {
				return usagef("%s takes a VM name and BUS-PORT or a device node", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if strings.HasPrefix(args[1], "/") {
				if vendor != "" {
					return usagef("--id goes with BUS-PORT, not a device node")
				}
				return runUSBAttachPath(cmd, g, name, args[1], asJSON)
			}
			bus, port, err := parseBusPort(args[1])
			if err != nil {
				return err
			}
			var vid, pid uint64
			if vendor != "" {
				v, p, ok := strings.Cut(vendor, ":")
				var e1, e2 error
				vid, e1 = strconv.ParseUint(v, 16, 16)
				pid, e2 = strconv.ParseUint(p, 16, 16)
				if !ok || e1 != nil || e2 != nil {
					return usagef("--id %q is not VENDOR:PRODUCT in hex", vendor)
				}
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := concierge.NewVmConciergeClient(conn).AttachUsbDevice(cmd.Context(), &concierge.AttachUsbDeviceRequest{
				VmName: name, OwnerId: g.owner, BusNumber: bus, PortNumber: port, VendorId: uint32(vid), ProductId: uint32(pid)})
			return usbAttached(cmd, name, args[1], resp, err, asJSON)
		},
	}
	cmd.Flags().StringVar(&vendor, "id", "", "the device's VENDOR:PRODUCT ids (hex); another device is refused")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

// runUSBAttachPath attaches the device whose node on cabind's host is
// path, through cabin.v1.
func runUSBAttachPath(cmd *cobra.Command, g *globals, name, path string, asJSON bool) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := cabinv1.NewVmsClient(conn).AttachUsbDevice(cmd.Context(), &cabinv1.AttachUsbDeviceRequest{
		VmName: name, OwnerId: g.owner, DevicePath: path})
	return usbAttached(cmd, name, path, resp, err, asJSON)
}

// usbAttached reports an attach of the device what to name.
func usbAttached(cmd *cobra.Command, name, what string, resp *concierge.AttachUsbDeviceResponse, err error, asJSON bool) error {
	if err != nil {
		return fmt.Errorf("attach usb device %s to %s: %w", what, name, err)
	}
	if asJSON {
		if err := writeJSON(cmd.OutOrStdout(), resp); err != nil {
			return err
		}
	}
	if !resp.GetSuccess() {
		return fmt.Errorf("attach usb device %s to %s: %s", what, name, orUnknown(resp.GetReason()))
	}
	if !asJSON {
		fmt.Fprintf(cmd.OutOrStdout(), "attached usb device %s to %s on guest port %d\n", what, name, resp.GetGuestPort())
	}
	return nil
}

func newVMUSBDetachCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "detach VM PORT",
		Short:   "Take a USB device back from a VM",
		Example: "  cabin vm usb detach dev 1",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 || args[0] == "" {
				return usagef("%s takes a VM name and a guest port", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			port, err := strconv.ParseUint(args[1], 10, 32)
			if err != nil {
				return usagef("guest port %q is not a number", args[1])
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := concierge.NewVmConciergeClient(conn).DetachUsbDevice(cmd.Context(), &concierge.DetachUsbDeviceRequest{
				VmName: name, OwnerId: g.owner, GuestPort: uint32(port)})
			if err != nil {
				return fmt.Errorf("detach the usb device on port %d from %s: %w", port, name, err)
			}
			if !resp.GetSuccess() {
				return fmt.Errorf("detach the usb device on port %d from %s: %s", port, name, orUnknown(resp.GetFailureReason()))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached the usb device on guest port %d from %s\n", port, name)
			return nil
		},
	}
}

func newVMUSBListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list VM [--json]",
		Short: "List the USB devices passed to a VM",
		Long:  "list lists the host USB devices passed to the VM. --json prints a JSON array\nof concierge's UsbDeviceMessage.",
		Args:  nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := concierge.NewVmConciergeClient(conn).ListUsbDevices(cmd.Context(), &concierge.ListUsbDeviceRequest{
				VmName: name, OwnerId: g.owner})
			if err != nil {
				return fmt.Errorf("list the usb devices of %s: %w", name, err)
			}
			if asJSON {
				return writeJSONArray(cmd.OutOrStdout(), resp.GetUsbDevices())
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "PORT\tID\tNAME")
			for _, d := range resp.GetUsbDevices() {
				fmt.Fprintf(tw, "%d\t%04x:%04x\t%s\n", d.GetGuestPort(), d.GetVendorId(), d.GetProductId(), d.GetDeviceName())
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

package main

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/cabinvm/cabin/api/concierge"
)

// newVMNetCmd is `cabin vm net`: NICs plugged into a VM started with
// --hotplug (concierge's AttachNetDevice and DetachNetDevice).
func newVMNetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "net",
		Short: "Plug NICs into a running VM, and out",
		Long: "net plugs virtio-net NICs into a VM started with --hotplug while it runs, and\n" +
			"takes them out. Each NIC is named by the PCI bus the guest finds it on.",
		Args: groupArgs,
		RunE: showHelp,
	}
	cmd.AddCommand(newVMNetAttachCmd(g), newVMNetDetachCmd(g))
	return cmd
}

func newVMNetAttachCmd(g *globals) *cobra.Command {
	var tap string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "attach VM [--tap NAME] [--json]",
		Short: "Plug a NIC into a VM",
		Long: "attach plugs a NIC into the VM and prints the guest's PCI bus it is on. The\n" +
			"NIC is on a tap cabind makes (up, without an address, removed with the NIC),\n" +
			"or with --tap on an existing tap of this host that the caller owns (root:\n" +
			"any tap but cabind's own), which stays when the NIC goes. --json prints\n" +
			"concierge's AttachNetDeviceResponse.",
		Example: "  cabin vm net attach dev\n  cabin vm net attach dev --tap mytap0",
		Args:    nameArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			name := args[0]
			resp, err := concierge.NewVmConciergeClient(conn).AttachNetDevice(cmd.Context(), &concierge.AttachNetDeviceRequest{
				VmName: name, OwnerId: g.owner, TapName: tap})
			if err != nil {
				return fmt.Errorf("attach a nic to %s: %w", name, err)
			}
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), resp); err != nil {
					return err
				}
			}
			if !resp.GetSuccess() {
				return fmt.Errorf("attach a nic to %s: %s", name, orUnknown(resp.GetFailureReason()))
			}
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "attached a nic to %s on guest pci bus %d\n", name, resp.GetGuestBus())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&tap, "tap", "", "an existing tap of this host to put the NIC on")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

func newVMNetDetachCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "detach VM BUS",
		Short:   "Take a NIC out of a VM",
		Long:    "detach takes the NIC on guest PCI bus BUS out of the VM, once the guest has\nlet go of it, and removes its tap if cabind made it.",
		Example: "  cabin vm net detach dev 1",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 || args[0] == "" {
				return usagef("%s takes a VM name and a guest bus", verb(cmd))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			bus, err := strconv.ParseUint(args[1], 10, 32)
			if err != nil {
				return usagef("guest bus %q is not a number", args[1])
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			resp, err := concierge.NewVmConciergeClient(conn).DetachNetDevice(cmd.Context(), &concierge.DetachNetDeviceRequest{
				VmName: name, OwnerId: g.owner, GuestBus: uint32(bus)})
			if err != nil {
				return fmt.Errorf("detach the nic on bus %d from %s: %w", bus, name, err)
			}
			if !resp.GetSuccess() {
				return fmt.Errorf("detach the nic on bus %d from %s: %s", bus, name, orUnknown(resp.GetFailureReason()))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached the nic on guest pci bus %d from %s\n", bus, name)
			return nil
		},
	}
	return cmd
}

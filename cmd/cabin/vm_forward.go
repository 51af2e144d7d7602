package main

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

// forwardOptions are vm forward's flags.
type forwardOptions struct {
	udp     bool
	address string
	list    bool
	rm      string
	asJSON  bool
}

func newVMForwardCmd(g *globals) *cobra.Command {
	o := &forwardOptions{}
	cmd := &cobra.Command{
		Use:   "forward VM HOSTPORT:GUESTPORT [--udp] [--address A] | VM --list [--json] | VM --rm HOSTPORT[/udp]",
		Short: "Forward a host port to a port of a VM",
		Long: "forward makes cabind listen on HOSTPORT of this host and carry each TCP\n" +
			"connection (or, with --udp, each client's datagrams) to GUESTPORT in the VM,\n" +
			"until the VM stops; a restarted cabind listens again. It listens on\n" +
			"127.0.0.1 unless --address names another of this host's addresses\n" +
			"(0.0.0.0 offers the VM's port to every network this host is on).\n" +
			"HOSTPORT:GUESTPORT/udp is the same as --udp. Host ports below 1024 are\n" +
			"root's. --list lists the VM's forwards (--json: a JSON array of\n" +
			"cabin.v1.Forward); --rm HOSTPORT[/udp] removes one, and the connections\n" +
			"it carries.",
		Example: "  cabin vm forward web 8080:80\n" +
			"  cabin vm forward dns 5353:53 --udp\n" +
			"  cabin vm forward web --list\n" +
			"  cabin vm forward web --rm 8080",
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 0 || args[0] == "":
				return usagef("%s needs a VM name", verb(cmd))
			case o.asJSON && !o.list:
				return usagef("--json goes with --list")
			case o.list || o.rm != "":
				if o.list && o.rm != "" {
					return usagef("--list and --rm go alone")
				}
				if len(args) > 1 {
					return usagef("%s VM %s takes no HOSTPORT:GUESTPORT, got %q", verb(cmd), listOrRm(o), args[1])
				}
			case len(args) == 1:
				return usagef("%s needs a VM name and HOSTPORT:GUESTPORT, or --list or --rm", verb(cmd))
			case len(args) > 2:
				return usagef("%s takes a VM name and one HOSTPORT:GUESTPORT, got %d arguments", verb(cmd), len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case o.list:
				return runForwardList(cmd, g, o, args[0])
			case o.rm != "":
				return runForwardRemove(cmd, g, o, args[0])
			}
			return runForwardAdd(cmd, g, o, args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.udp, "udp", false, "forward UDP instead of TCP")
	f.StringVar(&o.address, "address", "", "the host address to listen on (default 127.0.0.1)")
	f.BoolVar(&o.list, "list", false, "list the VM's forwards")
	f.StringVar(&o.rm, "rm", "", "remove the forward of HOSTPORT[/udp]")
	f.BoolVar(&o.asJSON, "json", false, "with --list: print JSON instead of a table")
	return cmd
}

func listOrRm(o *forwardOptions) string {
	if o.list {
		return "--list"
	}
	return "--rm"
}

// parsePort reads a port of the command line; what it means is the
// daemon's to check, so 0 and 65536 reach it (and are refused there).
func parsePort(what, s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, usagef("%s %q is not a port number", what, s)
	}
	return uint32(n), nil
}

// cutProto splits a trailing /tcp or /udp off s.
func cutProto(s string) (string, cabinv1.Protocol, bool, error) {
	rest, proto, ok := strings.Cut(s, "/")
	if !ok {
		return s, cabinv1.Protocol_PROTOCOL_TCP, false, nil
	}
	switch proto {
	case "tcp":
		return rest, cabinv1.Protocol_PROTOCOL_TCP, true, nil
	case "udp":
		return rest, cabinv1.Protocol_PROTOCOL_UDP, true, nil
	}
	return "", 0, false, usagef("protocol %q in %q: tcp or udp", proto, s)
}

// protocol is the protocol asked for by a /tcp or /udp suffix (when
// given) and --udp, which must agree.
func (o *forwardOptions) protocol(fromSuffix cabinv1.Protocol, suffixed bool, arg string) (cabinv1.Protocol, error) {
	if o.udp {
		if suffixed && fromSuffix != cabinv1.Protocol_PROTOCOL_UDP {
			return 0, usagef("%q says tcp and --udp says udp", arg)
		}
		return cabinv1.Protocol_PROTOCOL_UDP, nil
	}
	return fromSuffix, nil
}

func runForwardAdd(cmd *cobra.Command, g *globals, o *forwardOptions, name, spec string) error {
	ports, suffix, suffixed, err := cutProto(spec)
	if err != nil {
		return err
	}
	proto, err := o.protocol(suffix, suffixed, spec)
	if err != nil {
		return err
	}
	hostS, guestS, ok := strings.Cut(ports, ":")
	if !ok {
		return usagef("%q is not HOSTPORT:GUESTPORT", spec)
	}
	hostPort, err := parsePort("host port", hostS)
	if err != nil {
		return err
	}
	guestPort, err := parsePort("guest port", guestS)
	if err != nil {
		return err
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	fwd, err := cabinv1.NewForwardsClient(conn).AddForward(cmd.Context(), &cabinv1.AddForwardRequest{
		OwnerId: g.owner, VmName: name,
		Forward: &cabinv1.Forward{Protocol: proto, HostAddress: o.address, HostPort: hostPort, GuestPort: guestPort},
	})
	if err != nil {
		return fmt.Errorf("forward %s to %s: %w", spec, name, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "forwarding %s %s to port %d of %s\n",
		protoWord(fwd.GetProtocol()), hostPortOf(fwd), fwd.GetGuestPort(), name)
	return nil
}

func runForwardList(cmd *cobra.Command, g *globals, o *forwardOptions, name string) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := cabinv1.NewForwardsClient(conn).ListForwards(cmd.Context(), &cabinv1.ListForwardsRequest{OwnerId: g.owner, VmName: name})
	if err != nil {
		return fmt.Errorf("list the forwards of %s: %w", name, err)
	}
	if o.asJSON {
		return writeJSONArray(cmd.OutOrStdout(), resp.GetForwards())
	}
	return writeForwardTable(cmd.OutOrStdout(), resp.GetForwards())
}

func runForwardRemove(cmd *cobra.Command, g *globals, o *forwardOptions, name string) error {
	portS, suffix, suffixed, err := cutProto(o.rm)
	if err != nil {
		return err
	}
	proto, err := o.protocol(suffix, suffixed, o.rm)
	if err != nil {
		return err
	}
	port, err := parsePort("host port", portS)
	if err != nil {
		return err
	}
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := cabinv1.NewForwardsClient(conn).RemoveForward(cmd.Context(), &cabinv1.RemoveForwardRequest{
		OwnerId: g.owner, VmName: name, Protocol: proto, HostAddress: o.address, HostPort: port,
	})
	if err != nil {
		return fmt.Errorf("remove the forward of %s from %s: %w", o.rm, name, err)
	}
	fwd := resp.GetForward()
	fmt.Fprintf(cmd.OutOrStdout(), "removed %s %s to port %d of %s\n",
		protoWord(fwd.GetProtocol()), hostPortOf(fwd), fwd.GetGuestPort(), name)
	return nil
}

// protoWord is a protocol for people: "tcp", "udp".
func protoWord(p cabinv1.Protocol) string {
	return enumWord(p.String(), "PROTOCOL_")
}

// hostPortOf is a forward's host end, "127.0.0.1:8080" or "[::1]:8080".
func hostPortOf(f *cabinv1.Forward) string {
	return net.JoinHostPort(f.GetHostAddress(), strconv.FormatUint(uint64(f.GetHostPort()), 10))
}

// writeForwardTable writes the forwards as a table, then a line for each
// that cabind does not listen for, saying why.
func writeForwardTable(w io.Writer, fwds []*cabinv1.Forward) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTOCOL\tHOST\tGUEST PORT")
	for _, f := range fwds {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", protoWord(f.GetProtocol()), hostPortOf(f), f.GetGuestPort())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, f := range fwds {
		if p := f.GetProblem(); p != "" {
			if _, err := fmt.Fprintf(w, "%s %s is not forwarded: %s\n", protoWord(f.GetProtocol()), hostPortOf(f), p); err != nil {
				return err
			}
		}
	}
	return nil
}

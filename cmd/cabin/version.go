package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/version"
)

func newVersionCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use: "version [--json]",
		Example: "  cabin version\n" +
			"  cabin version --json",
		Short: "Show the versions of cabin, cabind and the guest",
		Long: "version shows this cabin's version, then cabind's, the guest agent's it puts\n" +
			"into VMs, the guest kernel of the cached image, QEMU's and the accelerator.\n" +
			"When cabind cannot be reached, cabin's own version is still shown, and the\n" +
			"command fails. cabin --version shows cabin's alone.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVersion(cmd, g, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func runVersion(cmd *cobra.Command, g *globals, asJSON bool) error {
	w := cmd.OutOrStdout()
	conn, err := g.dial()
	var v *cabinv1.VersionResponse
	if err == nil {
		defer conn.Close()
		v, err = cabinv1.NewSystemClient(conn).Version(cmd.Context(), &cabinv1.VersionRequest{})
	}
	if asJSON {
		if jerr := writeVersionJSON(w, v); jerr != nil {
			return jerr
		}
	} else {
		writeVersion(w, v)
	}
	if err != nil {
		return fmt.Errorf("cabind's version: %w", err)
	}
	return nil
}

func writeVersion(w io.Writer, v *cabinv1.VersionResponse) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "cabin\t%s (%s)\n", version.Version, runtime.Version())
	if v != nil {
		fmt.Fprintf(tw, "cabind\t%s (%s)\n", v.GetCabind(), v.GetGo())
		fmt.Fprintf(tw, "agent\t%s\n", orDash(v.GetAgent()))
		fmt.Fprintf(tw, "guest kernel\t%s\n", orDash(v.GetGuestKernel()))
		fmt.Fprintf(tw, "qemu\t%s\n", orDash(v.GetQemu()))
		fmt.Fprintf(tw, "accelerator\t%s\n", orDash(v.GetAccel()))
	}
	tw.Flush()
}

// versionJSON is `cabin version --json`: cabin's own version, and
// cabind's answer when there is one.
type versionJSON struct {
	Client      string `json:"client"`
	ClientGo    string `json:"client_go"`
	Cabind      string `json:"cabind,omitempty"`
	CabindGo    string `json:"cabind_go,omitempty"`
	Agent       string `json:"agent,omitempty"`
	GuestKernel string `json:"guest_kernel,omitempty"`
	QEMU        string `json:"qemu,omitempty"`
	Accel       string `json:"accel,omitempty"`
}

func writeVersionJSON(w io.Writer, v *cabinv1.VersionResponse) error {
	out := versionJSON{Client: version.Version, ClientGo: runtime.Version()}
	if v != nil {
		out.Cabind, out.CabindGo, out.Agent = v.GetCabind(), v.GetGo(), v.GetAgent()
		out.GuestKernel, out.QEMU, out.Accel = v.GetGuestKernel(), v.GetQemu(), v.GetAccel()
	}
	return writePlainJSON(w, out)
}

// writePlainJSON is cabin's own JSON (not a message's): indented, numbers
// as numbers.
func writePlainJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

func newInfoCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use: "info [--json]",
		Example: "  cabin info\n" +
			"  cabin info --json",
		Short: "Show the host as cabind sees it",
		Long: "info shows QEMU and its version, the accelerator VMs run under and why (KVM\n" +
			"usable, or why not), whether vhost-vsock and vhost-net are there, the state\n" +
			"dir and its free space, the guest image cache, the host, the network VMs get\n" +
			"by default, and how many VMs run.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			in, err := cabinv1.NewSystemClient(conn).Info(cmd.Context(), &cabinv1.InfoRequest{})
			if err != nil {
				return fmt.Errorf("info: %w", err)
			}
			if asJSON {
				return writePlainJSON(cmd.OutOrStdout(), infoJSONOf(in))
			}
			return writeInfo(cmd.OutOrStdout(), in)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// infoJSON is `cabin info --json`.
type infoJSON struct {
	QEMUBinary         string `json:"qemu_binary"`
	QEMUVersion        string `json:"qemu_version"`
	Accel              string `json:"accel"`
	AccelReason        string `json:"accel_reason"`
	VhostVsock         bool   `json:"vhost_vsock"`
	VhostVsockReason   string `json:"vhost_vsock_reason,omitempty"`
	VhostNet           bool   `json:"vhost_net"`
	StateDir           string `json:"state_dir"`
	StateDirFreeBytes  uint64 `json:"state_dir_free_bytes"`
	StateDirTotalBytes uint64 `json:"state_dir_total_bytes"`
	ImageKernel        string `json:"image_kernel"`
	ImageInitramfs     int64  `json:"image_initramfs_bytes"`
	ImageBuiltAt       string `json:"image_built_at"`
	ImageCacheBytes    int64  `json:"image_cache_bytes"`
	HostKernel         string `json:"host_kernel"`
	HostCPUs           int32  `json:"host_cpus"`
	HostMemoryBytes    uint64 `json:"host_memory_bytes"`
	Network            string `json:"network"`
	VMsRunning         int32  `json:"vms_running"`
}

func infoJSONOf(in *cabinv1.InfoResponse) infoJSON {
	return infoJSON{
		QEMUBinary: in.GetQemuBinary(), QEMUVersion: in.GetQemuVersion(),
		Accel: in.GetAccel(), AccelReason: in.GetAccelReason(),
		VhostVsock: in.GetVhostVsock(), VhostVsockReason: in.GetVhostVsockReason(), VhostNet: in.GetVhostNet(),
		StateDir: in.GetStateDir(), StateDirFreeBytes: in.GetStateDirFreeBytes(), StateDirTotalBytes: in.GetStateDirTotalBytes(),
		ImageKernel: in.GetImageKernel(), ImageInitramfs: in.GetImageInitramfsBytes(),
		ImageBuiltAt: in.GetImageBuiltAt(), ImageCacheBytes: in.GetImageCacheBytes(),
		HostKernel: in.GetHostKernel(), HostCPUs: in.GetHostCpus(), HostMemoryBytes: in.GetHostMemoryBytes(),
		Network: in.GetNetwork(), VMsRunning: in.GetVmsRunning(),
	}
}

func writeInfo(w io.Writer, in *cabinv1.InfoResponse) error {
	vsock := "yes"
	if !in.GetVhostVsock() {
		vsock = "no (" + in.GetVhostVsockReason() + "; the channel is virtio-serial)"
	}
	yesNo := map[bool]string{true: "yes", false: "no"}
	image := "none yet (built at the first start, or `cabin image build`)"
	if in.GetImageKernel() != "" {
		image = fmt.Sprintf("kernel %s, initramfs %s, built %s", in.GetImageKernel(),
			formatBytes(in.GetImageInitramfsBytes()), orDash(in.GetImageBuiltAt()))
	}
	rows := [][2]string{
		{"QEMU", in.GetQemuBinary() + " (" + orDash(in.GetQemuVersion()) + ")"},
		{"ACCELERATOR", in.GetAccel() + ": " + in.GetAccelReason()},
		{"VHOST-VSOCK", vsock},
		{"VHOST-NET", yesNo[in.GetVhostNet()]},
		{"STATE DIR", fmt.Sprintf("%s (%s free of %s)", in.GetStateDir(),
			formatBytes(int64(in.GetStateDirFreeBytes())), formatBytes(int64(in.GetStateDirTotalBytes())))},
		{"GUEST IMAGE", image},
		{"IMAGE CACHE", formatBytes(in.GetImageCacheBytes())},
		{"HOST", fmt.Sprintf("Linux %s, %d CPUs, %s", in.GetHostKernel(), in.GetHostCpus(), formatBytes(int64(in.GetHostMemoryBytes())))},
		{"NETWORK", orDash(in.GetNetwork())},
		{"VMS RUNNING", fmt.Sprint(in.GetVmsRunning())},
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

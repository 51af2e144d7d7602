package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
)

// cpuClasses are the classes of VMs --class names, as concierge's
// CpuCgroup.
var cpuClasses = map[string]concierge.CpuCgroup{
	"termina":  concierge.CpuCgroup_CPU_CGROUP_TERMINA,
	"pluginvm": concierge.CpuCgroup_CPU_CGROUP_PLUGINVM,
	"arcvm":    concierge.CpuCgroup_CPU_CGROUP_ARCVM,
}

// cpuStates are the restrictions the argument names, as concierge's
// CpuRestrictionState.
var cpuStates = map[string]concierge.CpuRestrictionState{
	"foreground":       concierge.CpuRestrictionState_CPU_RESTRICTION_FOREGROUND,
	"background":       concierge.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND,
	"background-quota": concierge.CpuRestrictionState_CPU_RESTRICTION_BACKGROUND_WITH_CFS_QUOTA_ENFORCED,
}

func newVMCPUCmd(g *globals) *cobra.Command {
	var class string
	var quota int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "cpu [--class termina|pluginvm|arcvm] foreground|background|background-quota [--quota PERCENT] [--json]",
		Short: "Restrict the CPU of a class of VMs (root only)",
		Long: "cpu sets the CPU restriction of every VM of a class (concierge's\n" +
			"SetVmCpuRestriction): foreground (cpu weight 1024), background (64), or\n" +
			"background-quota (64, and for arcvm 25% of one CPU, as upstream). --quota\n" +
			"PERCENT (1 to 100) bounds any class to that share of one CPU in the\n" +
			"background (cabin.v1.Cpu.SetCpuQuota); the restriction may then be left\n" +
			"out. A class holds every user's VMs, so only root may. The class of a VM\n" +
			"is its type: pluginvm for PLUGIN_VM, arcvm for ARC_VM, termina for every\n" +
			"other (cabin's own VMs included). --json prints the\n" +
			"SetVmCpuRestrictionResponse.",
		Example: "  cabin vm cpu --class termina background\n  cabin vm cpu --class pluginvm --quota 30",
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) > 1:
				return usagef("%s takes one restriction, got %d arguments", verb(cmd), len(args))
			case len(args) == 0 && !cmd.Flags().Changed("quota"):
				return usagef("%s needs a restriction: %s (or --quota)", verb(cmd), strings.Join(sortedKeys(cpuStates), ", "))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cgroup, ok := cpuClasses[class]
			if !ok {
				return usagef("--class %q: want one of %s", class, strings.Join(sortedKeys(cpuClasses), ", "))
			}
			withQuota := cmd.Flags().Changed("quota")
			what := "background-quota"
			if len(args) == 1 {
				what = args[0]
			}
			state, ok := cpuStates[what]
			switch {
			case !ok:
				return usagef("restriction %q: want one of %s", what, strings.Join(sortedKeys(cpuStates), ", "))
			case withQuota && what != "background-quota":
				return usagef("--quota bounds a class in the background: it goes with background-quota, not %s", what)
			case withQuota && (quota < 1 || quota > 100):
				return usagef("--quota %d: want 1 to 100 (percent of one CPU)", quota)
			}
			conn, err := g.dial()
			if err != nil {
				return err
			}
			defer conn.Close()
			var resp *concierge.SetVmCpuRestrictionResponse
			if withQuota {
				what = fmt.Sprintf("background, at most %d%% of a CPU", quota)
				resp, err = cabinv1.NewCpuClient(conn).SetCpuQuota(cmd.Context(),
					&cabinv1.SetCpuQuotaRequest{CpuCgroup: cgroup, QuotaPercent: int32(quota)})
			} else {
				resp, err = concierge.NewVmConciergeClient(conn).SetVmCpuRestriction(cmd.Context(),
					&concierge.SetVmCpuRestrictionRequest{CpuCgroup: cgroup, CpuRestrictionState: state})
			}
			if err != nil {
				return fmt.Errorf("restrict the cpu of %s vms: %w", class, err)
			}
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), resp); err != nil {
					return err
				}
			}
			if !resp.GetSuccess() {
				// Upstream's response carries no reason; cabind logs it.
				return fmt.Errorf("restrict the cpu of %s vms: cabind could not (no cpu cgroups on its host? its log says why)", class)
			}
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "%s vms: %s\n", class, what)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&class, "class", "termina", "the class of VMs: termina, pluginvm or arcvm")
	cmd.Flags().IntVar(&quota, "quota", 0, "bound the class to PERCENT of one CPU (1 to 100), in the background")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON")
	return cmd
}

// sortedKeys are m's keys in order, for messages.
func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

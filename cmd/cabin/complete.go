package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
)

// flagValues are the fixed values of flags, offered by shell completion
// wherever a command has the flag.
var flagValues = map[string][]string{
	"accel":  {"auto", "kvm", "tcg"},
	"net":    {"tap", "user", "none"},
	"format": {"raw", "qcow2"},
	"class":  {"termina", "pluginvm", "arcvm"},
}

// addCompletions walks the command tree: a command whose first argument
// is a VM (NAME or VM in its usage line) completes it with the names of
// the caller's VMs, asked of cabind; flags with fixed values complete
// them. Everything after the VM (a command to run in it) completes to
// nothing, not to local file names.
func addCompletions(root *cobra.Command, g *globals) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.ValidArgsFunction == nil && c.Runnable() {
			switch a := firstArg(c.Use); a {
			case "NAME", "VM":
				c.ValidArgsFunction = completeVMs(g)
			case "CONTAINER", "CONTAINER...":
				c.ValidArgsFunction = completeContainers(g)
			}
		}
		for name, values := range flagValues {
			if c.Flags().Lookup(name) == nil {
				continue
			}
			if _, ok := c.GetFlagCompletionFunc(name); ok {
				continue
			}
			c.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// firstArg is the first positional argument of a usage line such as
// "exec [-i] [-e K=V] NAME [--] CMD": the first word after the command's
// own name that is not inside brackets.
func firstArg(use string) string {
	depth := 0
	for i, w := range strings.Fields(use) {
		open := strings.HasPrefix(w, "[")
		depth += strings.Count(w, "[") - strings.Count(w, "]")
		if i == 0 || open || depth > 0 || strings.HasSuffix(w, "]") {
			continue
		}
		return w
	}
	return ""
}

// completionCall makes call to cabind for a completion, with a short
// deadline: a shell waits for it.
func completionCall(g *globals, call func(ctx context.Context, conn *grpc.ClientConn) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return call(ctx, conn)
}

func completeVMs(g *globals) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var resp *cabinv1.ListVmsResponse
		err := completionCall(g, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
			resp, err = cabinv1.NewVmsClient(conn).ListVms(ctx, &cabinv1.ListVmsRequest{OwnerId: g.owner})
			return err
		})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var names []cobra.Completion
		for _, vm := range resp.GetVms() {
			if strings.HasPrefix(vm.GetName(), toComplete) {
				names = append(names, vm.GetName())
			}
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

package main

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/internal/names"
)

// The container verbs (ps, exec, stop, rm, logs, stats, cp) find a
// container by its id among the containers of the caller's running VMs:
// cabin.v1's ListVms, then each VM's cabin.v1.Containers/List through the
// relay, the VMs asked at once. --vm asks one VM only, and settles an id
// that more than one VM has.

// vmUnreachable is a running VM whose containers could not be listed.
type vmUnreachable struct {
	vm  string
	err error
}

// containerList is the containers found, each with its VM filled in.
type containerList struct {
	containers []*containersv1.Container
	// failed are the VMs that did not answer, by name.
	failed []vmUnreachable
}

// runningVMs lists the names of the caller's VMs that can answer.
func runningVMs(ctx context.Context, conn *grpc.ClientConn, g *globals) ([]string, error) {
	resp, err := cabinv1.NewVmsClient(conn).ListVms(ctx, &cabinv1.ListVmsRequest{OwnerId: g.owner})
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	var names []string
	for _, v := range resp.GetVms() {
		if v.GetState() == cabinv1.VmState_VM_STATE_RUNNING {
			names = append(names, v.GetName())
		}
	}
	sort.Strings(names)
	return names, nil
}

// listContainers lists the containers of vm, or of every running VM of
// the caller's when vm is empty.
func listContainers(ctx context.Context, conn *grpc.ClientConn, g *globals, vm string) (*containerList, error) {
	vms := []string{vm}
	if vm == "" {
		var err error
		if vms, err = runningVMs(ctx, conn, g); err != nil {
			return nil, err
		}
	}
	return listVMContainers(ctx, conn, g, vms, vm)
}

// listVMContainers lists the containers of vms, asked at once; vm is
// --vm's (then vms is it alone, and its failure is an error).
func listVMContainers(ctx context.Context, conn *grpc.ClientConn, g *globals, vms []string, vm string) (*containerList, error) {
	client := containersv1.NewContainersClient(conn)
	lists := make([][]*containersv1.Container, len(vms))
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i, name := range vms {
		wg.Go(func() {
			resp, err := client.List(vmContext(ctx, g, name), &containersv1.ListContainersRequest{})
			if err != nil {
				errs[i] = err
				return
			}
			for _, c := range resp.GetContainers() {
				c.Vm = name
			}
			lists[i] = resp.GetContainers()
		})
	}
	wg.Wait()
	l := &containerList{}
	for i, name := range vms {
		if errs[i] != nil {
			if vm != "" {
				return nil, fmt.Errorf("list the containers of %s: %w", name, errs[i])
			}
			l.failed = append(l.failed, vmUnreachable{vm: name, err: errs[i]})
			continue
		}
		l.containers = append(l.containers, lists[i]...)
	}
	return l, nil
}

// warn tells of the VMs that did not answer, on w.
func (l *containerList) warn(w interface{ Write([]byte) (int, error) }) {
	for _, f := range l.failed {
		fmt.Fprintf(w, "cabin: the containers of %s could not be listed: %s\n", f.vm, containerErrorMessage(f.err))
	}
}

// containerErrorMessage words an error from a VM's Containers service.
func containerErrorMessage(err error) string {
	if status.Code(err) == codes.Unimplemented {
		return "its agent has no container list (an older guest image: rebuild it with cabin image build)"
	}
	return errorMessage(err)
}

// errNoContainer is a container id no VM has.
type errNoContainer struct {
	id, vm string
	failed []vmUnreachable
}

func (e *errNoContainer) Error() string {
	if e.vm != "" {
		return fmt.Sprintf("no container %q in VM %s", e.id, e.vm)
	}
	msg := fmt.Sprintf("no container %q in your running VMs", e.id)
	if len(e.failed) > 0 {
		var names []string
		for _, f := range e.failed {
			names = append(names, f.vm)
		}
		msg += " (not asked, as they did not answer: " + strings.Join(names, ", ") + ")"
	}
	return msg
}

// findContainer finds the container id: in vm, or in the one running VM
// that has it.
func findContainer(ctx context.Context, conn *grpc.ClientConn, g *globals, vm, id string) (*containersv1.Container, error) {
	if err := checkContainerArg(id); err != nil {
		return nil, err
	}
	l, err := listContainers(ctx, conn, g, vm)
	if err != nil {
		return nil, err
	}
	return l.find(id, vm)
}

// find finds one container of the list by id.
func (l *containerList) find(id, vm string) (*containersv1.Container, error) {
	var found []*containersv1.Container
	for _, c := range l.containers {
		if c.GetId() == id {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 0:
		return nil, &errNoContainer{id: id, vm: vm, failed: l.failed}
	case 1:
		return found[0], nil
	}
	var vms []string
	for _, c := range found {
		vms = append(vms, c.GetVm())
	}
	slices.Sort(vms)
	return nil, usagef("container %q is in more than one VM (%s): say which with --vm", id, strings.Join(vms, ", "))
}

// checkContainerArg checks a container id given as an argument.
func checkContainerArg(id string) error {
	if err := names.Check("container", id, names.MaxContainer); err != nil {
		return usagef("%v", err)
	}
	return nil
}

// containerState is a state's word.
func containerState(s containersv1.ContainerState) string {
	return enumWord(s.String(), "CONTAINER_STATE_")
}

// completeContainers completes container ids of the caller's running VMs
// (--vm's, when given): the first argument, or every one for a verb that
// takes several (CONTAINER... in its usage line).
func completeContainers(g *globals) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 && !strings.Contains(cmd.Use, "CONTAINER...") {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		vm := ""
		if f := cmd.Flags().Lookup("vm"); f != nil {
			vm = f.Value.String()
		}
		var l *containerList
		err := completionCall(g, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
			l, err = listContainers(ctx, conn, g, vm)
			return err
		})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var ids []cobra.Completion
		for _, c := range l.containers {
			if strings.HasPrefix(c.GetId(), toComplete) && !slices.Contains(args, c.GetId()) && !slices.Contains(ids, c.GetId()) {
				ids = append(ids, c.GetId())
			}
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}

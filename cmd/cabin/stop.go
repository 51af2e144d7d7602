package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/kata"
)

// killWait bounds the wait for a container's init after SIGKILL: it ends
// at once unless its VM is in trouble.
const killWait = 30 * time.Second

func newStopCmd(g *globals) *cobra.Command {
	var (
		secs int
		vm   string
	)
	cmd := &cobra.Command{
		Use:   "stop [-t SECS] [--vm NAME] CONTAINER...",
		Short: "Stop running containers",
		Long: "stop sends each container's init SIGTERM, waits up to -t seconds (default\n" +
			"10) for it to exit, then kills every process of the container with SIGKILL,\n" +
			"as docker stop does; -t 0 kills at once. (An init that does not handle\n" +
			"SIGTERM gets SIGKILL at once: in its own pid namespace SIGTERM would do\n" +
			"nothing.) It prints each container's id once it has stopped; a container\n" +
			"that has stopped already is left as it is. The containers stop at the same\n" +
			"time; cabin exits 1 if any could not be stopped.",
		Example: "  cabin stop web\n" +
			"  cabin stop -t 2 web worker",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s needs at least one container", verb(cmd))
			}
			if secs < 0 || secs > math.MaxInt32 {
				return usagef("-t %d: want a number of seconds, 0 or more", secs)
			}
			for _, id := range args {
				if err := checkContainerArg(id); err != nil {
					return err
				}
			}
			return checkVMFlag(vm)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachContainer(cmd, g, vm, args, func(ctx context.Context, conn *grpc.ClientConn, c *containersv1.Container) error {
				return stopContainer(ctx, conn, g, c, time.Duration(secs)*time.Second)
			})
		},
	}
	cmd.Flags().IntVarP(&secs, "time", "t", 10, "seconds to wait for the container to exit on SIGTERM before SIGKILL")
	cmd.Flags().StringVar(&vm, "vm", "", "the VM the containers are in")
	return cmd
}

// eachContainer finds the containers ids, with one listing, and does f to
// each at once, printing each id f succeeds for, in the order given, and
// an error for each it does not.
func eachContainer(cmd *cobra.Command, g *globals, vm string, ids []string,
	f func(context.Context, *grpc.ClientConn, *containersv1.Container) error) error {
	conn, err := g.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx := cmd.Context()
	l, err := listContainers(ctx, conn, g, vm)
	if err != nil {
		return err
	}
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		c, err := l.find(id, vm)
		if err != nil {
			errs[i] = err
			continue
		}
		wg.Go(func() { errs[i] = f(ctx, conn, c) })
	}
	wg.Wait()
	failed := 0
	for i, id := range ids {
		if errs[i] != nil {
			failed++
			fmt.Fprintf(cmd.ErrOrStderr(), "cabin: %s: %s\n", id, errorMessage(errs[i]))
			continue
		}
		fmt.Fprintln(cmd.OutOrStdout(), id)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d containers failed", failed, len(ids))
	}
	return nil
}

// stopContainer stops c: SIGTERM, up to grace for its init to exit, then
// SIGKILL to all its processes.
func stopContainer(ctx context.Context, conn *grpc.ClientConn, g *globals, c *containersv1.Container, grace time.Duration) error {
	if c.GetState() == containersv1.ContainerState_CONTAINER_STATE_STOPPED {
		return nil
	}
	agent := kata.NewAgentServiceClient(conn)
	ctx = vmContext(ctx, g, c.GetVm())
	signal := func(sig syscall.Signal) error {
		_, err := agent.SignalProcess(ctx, &kata.SignalProcessRequest{ContainerId: c.GetId(), Signal: uint32(sig)})
		return err
	}
	// wait waits for the init's exit; a second wait (someone else
	// waited) finds it gone, which means the same.
	wait := func(d time.Duration) error {
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		_, err := agent.WaitProcess(wctx, &kata.WaitProcessRequest{ContainerId: c.GetId()})
		if status.Code(err) == codes.NotFound {
			return nil
		}
		return err
	}
	if grace > 0 && c.GetState() == containersv1.ContainerState_CONTAINER_STATE_RUNNING {
		if err := signal(syscall.SIGTERM); err != nil {
			return fmt.Errorf("stop %s in %s: %w", c.GetId(), c.GetVm(), err)
		}
		err := wait(grace)
		if err == nil {
			return nil
		}
		if status.Code(err) != codes.DeadlineExceeded && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("stop %s in %s: %w", c.GetId(), c.GetVm(), err)
		}
	}
	if err := signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s in %s: %w", c.GetId(), c.GetVm(), err)
	}
	if err := wait(killWait); err != nil {
		return fmt.Errorf("kill %s in %s: %w", c.GetId(), c.GetVm(), err)
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/api/kata"
)

func newRmCmd(g *globals) *cobra.Command {
	var (
		force bool
		vm    string
	)
	cmd := &cobra.Command{
		Use:   "rm [-f] [--vm NAME] CONTAINER...",
		Short: "Remove containers",
		Long: "rm removes containers that are not running, with their kept output and the\n" +
			"storages only they used. A running or paused container is refused unless -f\n" +
			"is given, which kills its processes (SIGKILL) first, as docker rm -f does.\n" +
			"It prints each id removed; cabin exits 1 if any could not be.",
		Example: "  cabin rm web\n" +
			"  cabin rm -f $(cabin ps -aq)",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s needs at least one container", verb(cmd))
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
				return removeContainer(ctx, conn, g, c, force)
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running container first")
	cmd.Flags().StringVar(&vm, "vm", "", "the VM the containers are in")
	return cmd
}

func removeContainer(ctx context.Context, conn *grpc.ClientConn, g *globals, c *containersv1.Container, force bool) error {
	switch c.GetState() {
	case containersv1.ContainerState_CONTAINER_STATE_RUNNING, containersv1.ContainerState_CONTAINER_STATE_PAUSED:
		if !force {
			return fmt.Errorf("container %s in %s is %s: stop it first, or remove it with -f", c.GetId(), c.GetVm(), containerState(c.GetState()))
		}
	}
	agent := kata.NewAgentServiceClient(conn)
	_, err := agent.RemoveContainer(vmContext(ctx, g, c.GetVm()), &kata.RemoveContainerRequest{
		ContainerId: c.GetId(),
		Timeout:     uint32(removeTimeout / time.Second),
	})
	if status.Code(err) == codes.NotFound {
		// Gone meanwhile (an autoremove): what was asked.
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s in %s: %w", c.GetId(), c.GetVm(), err)
	}
	return nil
}

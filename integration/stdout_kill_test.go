package integration

import (
	"bytes"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cabinvm/cabin/api/kata"
)

// TestContainerStdoutQEMUKilled: a reader taking a container's output as
// fast as it comes (replies written straight from the agent's read
// buffers, decisions §35) when the VM's QEMU is SIGKILLed gets an error,
// not a hang nor a corrupt reply; every reply before it was whole; and
// cabind goes on serving the other VMs.
func TestContainerStdoutQEMUKilled(t *testing.T) {
	e := needEnv(t)
	const name = "cit-stdkill"
	vm := bootOwnVM(t, e, name)
	ctx := toVM(testContext(t, 3*time.Minute), name)
	agent := kata.NewAgentServiceClient(e.cc)
	const id = "it-stdout-kill"
	if _, err := agent.CreateContainer(ctx, &kata.CreateContainerRequest{ContainerId: id,
		Storages: []*kata.Storage{kataRootfs()}, OCI: kataSpec("dd", "if=/dev/zero", "bs=65536")}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := agent.StartContainer(ctx, &kata.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	zeros := make([]byte, 32<<10)
	read := func() (int, error) {
		resp, err := agent.ReadStdout(ctx, &kata.ReadStreamRequest{ContainerId: id, Len: 32 << 10})
		d := resp.GetData()
		if err == nil && (len(d) == 0 || len(d) > 32<<10 || !bytes.Equal(d, zeros[:len(d)])) {
			t.Fatalf("ReadStdout gave %d bytes, not all the zeros dd writes", len(d))
		}
		return len(d), err
	}
	var got int
	for got < 4<<20 {
		n, err := read()
		if err != nil {
			t.Fatalf("ReadStdout after %d bytes: %v", got, err)
		}
		got += n
	}
	// Kill QEMU while a reader goes on reading.
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := read(); err != nil {
				done <- err
				return
			}
		}
	}()
	if err := syscall.Kill(vm.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if status.Code(err) != codes.Unavailable {
			t.Errorf("ReadStdout when QEMU died: %v; want Unavailable", err)
		}
	case <-ctx.Done():
		t.Fatal("ReadStdout hung when QEMU died")
	}
	// The shared VM's agent still answers through cabind.
	_, err := agent.ReadStdout(toVM(testContext(t, time.Minute), e.shared.name), &kata.ReadStreamRequest{ContainerId: "it-stdout-none", Len: 10})
	wantCode(t, err, codes.NotFound)
}

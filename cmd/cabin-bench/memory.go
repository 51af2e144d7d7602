package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
)

const mib = 1 << 20

func benchMemory(ctx context.Context, e *env, t *table) error {
	status, err := execOutput(ctx, e, relayVM, "cat", "/proc/1/status")
	if err != nil {
		return fmt.Errorf("agent status: %w", err)
	}
	agent, err := vmRSS(bytes.NewReader(status))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", e.cabind.Process.Pid))
	if err != nil {
		return err
	}
	defer f.Close()
	daemon, err := vmRSS(f)
	if err != nil {
		return fmt.Errorf("cabind: %w", err)
	}
	t.add(row{metric: "memory: agent RSS after boot (PID 1 in the guest)", bytes: agent, limit: 12 * mib})
	t.add(row{metric: "memory: cabind RSS with one VM", bytes: daemon, limit: 40 * mib})
	return nil
}

// vmRSS reads VmRSS from a /proc/PID/status.
func vmRSS(r io.Reader) (int64, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// execOutput runs argv in a VM through cabind and returns its stdout.
func execOutput(ctx context.Context, e *env, vm string, argv ...string) ([]byte, error) {
	stream, err := execv1.NewExecClient(e.cc).Exec(toVM(ctx, vm))
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: &execv1.ExecStart{Argv: argv}}}); err != nil {
		return nil, err
	}
	stream.CloseSend()
	var out bytes.Buffer
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		out.Write(resp.GetStdout())
		if x := resp.GetExit(); x != nil {
			if x.GetCode() != 0 {
				return nil, fmt.Errorf("%q exited with %d", argv, x.GetCode())
			}
			return out.Bytes(), nil
		}
	}
}

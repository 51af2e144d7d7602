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
	"time"

	"google.golang.org/grpc"

	execv1 "github.com/cabinvm/cabin/api/cabin/exec/v1"
)

const mib = 1 << 20

// streamed is how much exec input and output (each) the agent's RSS is
// measured after, for reference: the goal is for the RSS after boot.
const streamed = 32 * mib

func benchMemory(ctx context.Context, e *env, t *table) error {
	agent, err := agentRSS(ctx, e)
	if err != nil {
		return err
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
	out, err := execIO(ctx, e.cc, relayVM, make([]byte, streamed), "cat")
	if err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	if len(out) != streamed {
		return fmt.Errorf("stream: %d bytes came back of %d", len(out), streamed)
	}
	// The agent returns memory in the background once an Exec has ended.
	time.Sleep(time.Second)
	after, err := agentRSS(ctx, e)
	if err != nil {
		return err
	}
	t.add(row{metric: "memory: agent RSS after boot (PID 1 in the guest)", bytes: agent, limit: 12 * mib,
		detail: fmt.Sprintf("%.1f MiB after %d MiB of exec input and output each and a second's rest", float64(after)/mib, streamed/mib)})
	t.add(row{metric: "memory: cabind RSS with one VM", bytes: daemon, limit: 40 * mib})
	return nil
}

// agentRSS returns the RSS of the agent in the relayed-call VM.
func agentRSS(ctx context.Context, e *env) (int64, error) {
	status, err := execIO(ctx, e.cc, relayVM, nil, "cat", "/proc/1/status")
	if err != nil {
		return 0, fmt.Errorf("agent status: %w", err)
	}
	rss, err := vmRSS(bytes.NewReader(status))
	if err != nil {
		return 0, fmt.Errorf("agent: %w", err)
	}
	return rss, nil
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

// execIO runs argv in a VM through the cabind at cc, with stdin (if not
// nil) as its input, and returns its stdout.
func execIO(ctx context.Context, cc *grpc.ClientConn, vm string, stdin []byte, argv ...string) ([]byte, error) {
	stream, err := execv1.NewExecClient(cc).Exec(toVM(ctx, vm))
	if err != nil {
		return nil, err
	}
	start := &execv1.ExecStart{Argv: argv, Stdin: stdin != nil}
	if err := stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Start{Start: start}}); err != nil {
		return nil, err
	}
	go func() {
		for b := stdin; len(b) > 0; {
			n := min(len(b), execv1.MaxChunk)
			if stream.Send(&execv1.ExecRequest{Kind: &execv1.ExecRequest_Stdin{Stdin: b[:n]}}) != nil {
				return
			}
			b = b[n:]
		}
		stream.CloseSend()
	}()
	return execOutput(stream, argv)
}

// execOutput reads an exec's stream to its end: its stdout, or an error
// when argv did not exit 0.
func execOutput(stream execv1.Exec_ExecClient, argv []string) ([]byte, error) {
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

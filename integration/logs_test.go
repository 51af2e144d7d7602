package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
	"github.com/cabinvm/cabin/api/concierge"
	"github.com/cabinvm/cabin/internal/statedir"
)

// TestLogs has a guest write 8.5 MiB to its console: more than gRPC's
// default 4 MiB message holds, and more than a console log file (5 MiB),
// so the log is rotated. GetVmLogs then answers with the newest part and
// says so; the cabin.v1 stream returns all of it, byte for byte what is on
// disk, and one following it meanwhile got the same, across the rotation,
// ending when the VM stops; `cabin vm logs --tail 5` prints 5 lines.
//
// The guest's console is its ISA serial port (/dev/console is ttyS0):
// under TCG it carries 100-150 KB/s here, so the write takes about a
// minute.
func TestLogs(t *testing.T) {
	e := needEnv(t)
	const name = "cit-logs"
	bootOwnVM(t, e, name)
	root, err := statedir.New(e.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	dir := root.VM(statedir.VMID("", name))
	vms := cabinv1.NewVmsClient(e.cc)

	// A follower from the start of the log, while the guest writes.
	followed := make(chan []byte, 1)
	followErr := make(chan error, 1)
	fctx, cancelFollow := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancelFollow()
	fstream, err := vms.Logs(fctx, &cabinv1.LogsRequest{Name: name, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		b, err := recvLogs(fstream)
		followed <- b
		followErr <- err
	}()

	// 5,376 lines of 1 KiB, numbered: more than GetVmLogs carries and
	// than a log file holds before it is rotated (the console moves ~110
	// KB/s under TCG: this takes ~50 s); the terminal makes each newline
	// "\r\n".
	const lines, width = 5376, 1024
	script := fmt.Sprintf(`BEGIN { p = sprintf("%%%ds", ""); gsub(/ /, "x", p); for (i = 1; i <= %d; i++) printf "%%08d %%s\n", i, p > "/dev/console" }`,
		width-10, lines)
	start := time.Now()
	res, err := execArgs(testContext(t, 5*time.Minute), e.cc, name, "awk", script)
	if err != nil || res.code != 0 {
		t.Fatalf("writing to the console: %v, %v", res, err)
	}
	last := fmt.Sprintf("%08d x", lines)
	for !bytes.Contains(tailOfLog(t, dir, 4<<10), []byte(last)) {
		if time.Since(start) > 5*time.Minute {
			t.Fatalf("the console log does not end with line %d after 5 minutes", lines)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("the guest wrote %d bytes to its console in %s", lines*width, time.Since(start).Round(time.Second))
	onDisk := logOnDisk(t, dir)
	if len(onDisk) < 5<<20 {
		t.Fatalf("the console log on disk has %d bytes, want over 5 MiB", len(onDisk))
	}
	if _, err := os.Stat(dir.RotatedLog(1)); err != nil {
		t.Errorf("the log was not rotated: %v", err)
	}

	t.Run("GetVmLogs", func(t *testing.T) {
		resp, err := concierge.NewVmConciergeClient(e.cc).GetVmLogs(testContext(t, 30*time.Second), &concierge.GetVmLogsRequest{Name: name})
		if err != nil {
			t.Fatalf("GetVmLogs of a %d-byte log: %v", len(onDisk), err)
		}
		note, rest, _ := strings.Cut(resp.GetLog(), "\n")
		if !strings.Contains(note, "cut") || !strings.Contains(note, "cabin vm logs "+name) || !strings.Contains(note, "cabin.v1.Vms/Logs") {
			t.Errorf("first line %q does not say the log was cut and where all of it is", note)
		}
		if len(rest) < 3<<20 || !strings.Contains(rest, last) {
			t.Errorf("GetVmLogs gave %d bytes after its note, without the last line", len(rest))
		}
	})

	t.Run("stream", func(t *testing.T) {
		stream, err := vms.Logs(testContext(t, time.Minute), &cabinv1.LogsRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		got, err := recvLogs(stream)
		if err != nil {
			t.Fatal(err)
		}
		after := logOnDisk(t, dir)
		if len(got) < len(onDisk) || !bytes.HasPrefix(after, got) {
			t.Errorf("the stream gave %d bytes; the log on disk has %d, then %d", len(got), len(onDisk), len(after))
		}
		checkLines(t, got, lines)
	})

	t.Run("cabin vm logs", func(t *testing.T) {
		res := cabinCLI(t, e, "vm", "logs", "--tail", "5", name)
		if res.code != 0 || strings.Count(res.stdout, "\n") != 5 || !strings.Contains(res.stdout, last) {
			t.Errorf("cabin vm logs --tail 5: exit %d, stdout %q, stderr %q; want 5 lines, the last %q...",
				res.code, res.stdout[:min(len(res.stdout), 300)], res.stderr, last)
		}
		res = cabinCLI(t, e, "vm", "logs", name)
		if res.code != 0 || len(res.stdout) < len(onDisk) || !strings.Contains(res.stdout, fmt.Sprintf("%08d x", 1)) {
			t.Errorf("cabin vm logs: exit %d, %d bytes out, want the %d of the log; stderr %q", res.code, len(res.stdout), len(onDisk), res.stderr)
		}
	})

	// The follower ends once the VM has stopped, with all of its log.
	stopVM(t, e, name)
	select {
	case got := <-followed:
		if err := <-followErr; err != nil {
			t.Fatalf("following the log: %v", err)
		}
		if want := logOnDisk(t, dir); !bytes.Equal(got, want) {
			t.Errorf("the follower got %d bytes; the log on disk has %d", len(got), len(want))
		}
		checkLines(t, got, lines)
	case <-time.After(30 * time.Second):
		t.Fatal("the follower did not end within 30 s of the VM's stop")
	}
}

// recvLogs reads a Logs stream to its end.
func recvLogs(stream cabinv1.Vms_LogsClient) ([]byte, error) {
	var b bytes.Buffer
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return b.Bytes(), nil
		}
		if err != nil {
			return b.Bytes(), err
		}
		b.Write(chunk.GetData())
	}
}

// logOnDisk is a VM's console log as its files hold it, oldest first.
func logOnDisk(t *testing.T, dir statedir.VMDir) []byte {
	t.Helper()
	var out []byte
	for n := statedir.MaxRotatedLogs; n >= 0; n-- {
		name := dir.ConsoleLog()
		if n > 0 {
			name = dir.RotatedLog(n)
		}
		b, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// tailOfLog is the last n bytes (at most) of a VM's live console log.
func tailOfLog(t *testing.T, dir statedir.VMDir, n int64) []byte {
	t.Helper()
	f, err := os.Open(dir.ConsoleLog())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, min(n, st.Size()))
	m, _ := f.ReadAt(b, st.Size()-int64(len(b)))
	return b[:m]
}

var numbered = regexp.MustCompile(`(?m)^(\d{8}) x+\r?$`)

// checkLines fails t unless the numbered lines in log are 1 to n, each
// once, in order.
func checkLines(t *testing.T, log []byte, n int) {
	t.Helper()
	want := 1
	for _, m := range numbered.FindAllSubmatch(log, -1) {
		if string(m[1]) != fmt.Sprintf("%08d", want) {
			t.Errorf("line %s where line %08d was due: output lost or repeated", m[1], want)
			return
		}
		want++
	}
	if want != n+1 {
		t.Errorf("%d numbered lines, want %d", want-1, n)
	}
}

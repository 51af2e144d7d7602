//go:build agentprof

package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"runtime/pprof"
	"time"
)

// A diagnostic build only (go build -tags agentprof): the agent profiles
// its CPU in consecutive windows of profWindow and writes each profile to
// the console, base64 between markers, with the guest's CPU times
// (/proc/stat) around it, for scripts/agentprof.sh to cut out of the VM's
// console log. The guest has no disk to keep a profile on, and the
// console is the one way out that needs nothing of the channel being
// measured. Never in a release build (decisions §31).
const profWindow = 8 * time.Second

func init() {
	go func() {
		for n := 0; ; n++ {
			var b bytes.Buffer
			stat0, _ := os.ReadFile("/proc/stat")
			if err := pprof.StartCPUProfile(&b); err != nil {
				return
			}
			time.Sleep(profWindow)
			pprof.StopCPUProfile()
			stat1, _ := os.ReadFile("/proc/stat")
			fmt.Fprintf(os.Stderr, "\nCABIN-STAT %d before: %s\nCABIN-STAT %d after: %s\n", n, firstLine(stat0), n, firstLine(stat1))
			fmt.Fprintf(os.Stderr, "\nCABIN-PPROF-BEGIN %d\n", n)
			enc := base64.StdEncoding.EncodeToString(b.Bytes())
			for len(enc) > 0 {
				k := min(len(enc), 76)
				fmt.Fprintln(os.Stderr, enc[:k])
				enc = enc[k:]
			}
			fmt.Fprintf(os.Stderr, "CABIN-PPROF-END %d\n", n)
		}
	}()
}

func firstLine(b []byte) []byte {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i]
	}
	return b
}

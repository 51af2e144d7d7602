package guestinit

import (
	"fmt"
	"os"
	"strconv"
)

// AgentOOMScoreAdj is the agent's oom_score_adj, which everything it starts
// inherits: cabin-runtime while it runs, Maitred's processes and the exec
// sessions. The kernel never picks PID 1 itself; the score makes the OOM
// killer take a container's process (0 unless its spec says otherwise, and
// never below this; internal/guest/kata) before any of those. It is Kata's
// agent's own (its unit's OOMScoreAdjust), and not -1000, which would make
// them unkillable: a runaway exec session would then leave the kernel
// nothing to kill but the containers, and then nothing at all.
const AgentOOMScoreAdj = -997

// SetOOMScoreAdj sets the calling process's oom_score_adj in procfs (/proc
// in the guest).
func SetOOMScoreAdj(procfs string, adj int) error {
	if err := os.WriteFile(procfs+"/self/oom_score_adj", []byte(strconv.Itoa(adj)), 0); err != nil {
		return fmt.Errorf("set oom_score_adj: %w", err)
	}
	return nil
}

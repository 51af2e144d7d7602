package execv1

// MaxChunk is the most stdin, stdout or stderr bytes one ExecRequest or
// ExecResponse should carry. The message then encodes to at most 32 KiB,
// which gRPC's buffer pools serve from their 32 KiB class. A few bytes more
// and every message takes (and zeroes) a 1 MiB buffer at both ends, which
// in a guest under emulation made the collector most of an exec's cost.
const MaxChunk = 32<<10 - 16

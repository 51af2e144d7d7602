package portfwdv1

// MaxChunk is the most bytes of a TCP stream one GuestPortRequest or
// GuestPortResponse should carry: the message then encodes to at most
// 32 KiB, which gRPC's buffer pools serve from their 32 KiB class (see
// execv1.MaxChunk). A UDP datagram travels whole, whatever its size.
const MaxChunk = 32<<10 - 16

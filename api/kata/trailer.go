package kata

// ExitSignalTrailer is a trailer cabin's agent adds to a WaitProcess reply
// for a process a signal killed, holding the signal's number in decimal.
// The reply's status is the signal's number too, as Kata's own agent
// reports it, which an exit code can also be; the trailer lets a client
// that knows of it tell "exit 9" from "killed by SIGKILL". Clients that do
// not are unaffected: gRPC passes unknown trailers by.
const ExitSignalTrailer = "cabin-exit-signal"

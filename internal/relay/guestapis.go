package relay

// The descriptors of the guest services cabind relays without serving
// them itself. isUnary finds a method's kind in the protobuf registry, and
// a service missing from it is relayed as a stream: gRPC over HTTP/2 on
// the agent's yamux session, not the unary-call port. For Kata's
// AgentService that made every ReadStdout, WaitProcess or StatsContainer
// cost what the slower path costs (decisions §31).
import (
	_ "github.com/cabinvm/cabin/api/cabin/containers/v1" // cabin.v1.Containers
	_ "github.com/cabinvm/cabin/api/kata"                // grpc.AgentService, grpc.Health
)

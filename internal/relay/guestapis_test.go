package relay

import "testing"

// The services the agent serves that cabind does not: their unary calls
// must take the unary-call port, their streams stay streams.
func TestGuestServicesKnown(t *testing.T) {
	for method, want := range map[string]bool{
		"/grpc.AgentService/ReadStdout":      true,
		"/grpc.AgentService/WaitProcess":     true,
		"/grpc.AgentService/StatsContainer":  true,
		"/grpc.Health/Check":                 true,
		"/cabin.v1.Containers/List":          true,
		"/cabin.v1.Containers/Logs":          false,
		"/grpc.AgentService/NoSuchMethod":    false,
		"/vm_tools.Maitred/GetKernelVersion": true,
		"/no.such.Service/ReadStdout":        false,
	} {
		if got := isUnary(method); got != want {
			t.Errorf("isUnary(%s) = %v, want %v", method, got, want)
		}
	}
}

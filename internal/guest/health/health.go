// Package health is Kata's grpc.Health service as the agent serves it: the
// host asks it whether the agent is up and which version it runs.
package health

import (
	"context"

	"google.golang.org/grpc"

	"github.com/cabinvm/cabin/api/kata"
	"github.com/cabinvm/cabin/internal/version"
)

// Service answers grpc.Health. The agent is serving whenever it can answer.
type Service struct {
	kata.UnimplementedHealthServer
}

var _ kata.HealthServer = Service{}

// Check reports SERVING: an agent that can answer is up.
func (Service) Check(context.Context, *kata.CheckRequest) (*kata.HealthCheckResponse, error) {
	return &kata.HealthCheckResponse{Status: kata.HealthCheckResponse_SERVING}, nil
}

// Version reports the gRPC library's version and the agent's.
func (Service) Version(context.Context, *kata.CheckRequest) (*kata.VersionCheckResponse, error) {
	return &kata.VersionCheckResponse{GrpcVersion: grpc.Version, AgentVersion: version.Version}, nil
}

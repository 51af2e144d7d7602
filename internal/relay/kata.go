package relay

import (
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/api/kata"
)

// Kata's AgentService calls the relay reads output ahead for
// (readahead), and those after which what it read ahead is stale.
const (
	kataService         = "/grpc.AgentService/"
	kataReadStdout      = kataService + "ReadStdout"
	kataReadStderr      = kataService + "ReadStderr"
	kataCreateContainer = kataService + "CreateContainer"
	kataExecProcess     = kataService + "ExecProcess"
	kataRemoveContainer = kataService + "RemoveContainer"
)

// kataRead tells whether method reads a process's output, and which.
func kataRead(method string) (stderr, ok bool) {
	switch method {
	case kataReadStdout:
		return false, true
	case kataReadStderr:
		return true, true
	}
	return false, false
}

// forgetAhead drops what was read ahead of processes that method, which
// has succeeded with the request req, made anew or removed: their ids may
// be used again, by new processes.
func (r *Relay) forgetAhead(vc vmConn, method string, req []byte) {
	var container, exec string
	switch method {
	case kataCreateContainer:
		var m kata.CreateContainerRequest
		if proto.Unmarshal(req, &m) != nil {
			return
		}
		container = m.GetContainerId()
	case kataRemoveContainer:
		var m kata.RemoveContainerRequest
		if proto.Unmarshal(req, &m) != nil {
			return
		}
		container = m.GetContainerId()
	case kataExecProcess:
		var m kata.ExecProcessRequest
		if proto.Unmarshal(req, &m) != nil {
			return
		}
		container, exec = m.GetContainerId(), m.GetExecId()
		if exec == "" {
			return
		}
	default:
		return
	}
	r.ahead.Forget(vc.owner, vc.name, container, exec)
}

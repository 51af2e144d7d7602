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
	var m interface {
		proto.Message
		GetContainerId() string
	}
	switch method {
	case kataCreateContainer:
		m = &kata.CreateContainerRequest{}
	case kataRemoveContainer:
		m = &kata.RemoveContainerRequest{}
	case kataExecProcess:
		m = &kata.ExecProcessRequest{}
	default:
		return
	}
	if proto.Unmarshal(req, m) != nil {
		return
	}
	exec := ""
	if e, ok := m.(*kata.ExecProcessRequest); ok {
		// An exec of no id is the init, which ExecProcess never makes.
		if exec = e.GetExecId(); exec == "" {
			return
		}
	}
	r.ahead.Forget(vc.owner, vc.name, m.GetContainerId(), exec)
}

package kata

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	containersv1 "github.com/cabinvm/cabin/api/cabin/containers/v1"
	"github.com/cabinvm/cabin/internal/errdefs"
	"github.com/cabinvm/cabin/internal/errgrpc"
)

// copyOutChunk is the size of CopyOut's data messages.
const copyOutChunk = 256 << 10

// ContainersService is cabin.v1.Containers over a Sandbox: what Kata's
// AgentService has no call for.
type ContainersService struct {
	containersv1.UnimplementedContainersServer
	s *Sandbox
}

var _ containersv1.ContainersServer = (*ContainersService)(nil)

// NewContainersService returns the service for s.
func NewContainersService(s *Sandbox) *ContainersService { return &ContainersService{s: s} }

var states = map[ContainerState]containersv1.ContainerState{
	StateCreated: containersv1.ContainerState_CONTAINER_STATE_CREATED,
	StateRunning: containersv1.ContainerState_CONTAINER_STATE_RUNNING,
	StatePaused:  containersv1.ContainerState_CONTAINER_STATE_PAUSED,
	StateStopped: containersv1.ContainerState_CONTAINER_STATE_STOPPED,
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (v *ContainersService) List(ctx context.Context, _ *containersv1.ListContainersRequest) (*containersv1.ListContainersResponse, error) {
	resp := &containersv1.ListContainersResponse{}
	for _, c := range v.s.List() {
		resp.Containers = append(resp.Containers, &containersv1.Container{
			Id:         c.ID,
			State:      states[c.State],
			Image:      c.Image,
			Command:    c.Command,
			Created:    timestamp(c.Created),
			Started:    timestamp(c.Started),
			Finished:   timestamp(c.Finished),
			ExitCode:   int32(c.ExitCode),
			Signal:     int32(c.Signal),
			Pid:        int32(c.Pid),
			LogsKept:   c.LogsKept,
			Autoremove: c.Autoremove,
			Tty:        c.TTY,
			Env:        c.Env,
			Cwd:        c.Cwd,
			Uid:        c.UID,
			Gid:        c.GID,
		})
	}
	return resp, nil
}

func (v *ContainersService) Logs(req *containersv1.ContainerLogsRequest, stream containersv1.Containers_LogsServer) error {
	tail := int64(-1)
	if req.Tail != nil {
		tail = max(req.GetTail(), 0)
	}
	err := v.s.Logs(stream.Context(), req.GetContainerId(), req.GetFollow(), tail, func(e LogEntry) error {
		st := containersv1.LogStream_LOG_STREAM_STDOUT
		if e.Stderr {
			st = containersv1.LogStream_LOG_STREAM_STDERR
		}
		return stream.Send(&containersv1.ContainerLogsResponse{Stream: st, Time: timestamppb.New(e.Time), Data: e.Data, Dropped: e.Dropped})
	})
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	return nil
}

func (v *ContainersService) CopyOut(req *containersv1.CopyOutRequest, stream containersv1.Containers_CopyOutServer) error {
	f, info, err := v.s.CopyOut(req.GetContainerId(), req.GetPath())
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer f.Close()
	err = stream.Send(&containersv1.CopyOutResponse{Kind: &containersv1.CopyOutResponse_Header{Header: &containersv1.CopyOutHeader{
		Size:     info.Size,
		Mode:     uint32(info.Mode.Perm()),
		Modified: timestamppb.New(time.Unix(0, info.Mod)),
	}}})
	if err != nil {
		return err
	}
	// The size said is what is sent: a file that grows meanwhile is cut,
	// one that shrinks is an error.
	buf := make([]byte, copyOutChunk)
	for left := info.Size; left > 0; {
		n, err := f.Read(buf[:min(int64(len(buf)), left)])
		if n > 0 {
			if err := stream.Send(&containersv1.CopyOutResponse{Kind: &containersv1.CopyOutResponse_Data{Data: buf[:n]}}); err != nil {
				return err
			}
			left -= int64(n)
		}
		if errors.Is(err, io.EOF) && left > 0 {
			return errgrpc.ToGRPC(fmt.Errorf("%s shrank while it was read: %w", req.GetPath(), errdefs.ErrUnavailable))
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return errgrpc.ToGRPC(fmt.Errorf("read %s: %w", req.GetPath(), err))
		}
	}
	return nil
}

func (v *ContainersService) CopyIn(stream containersv1.Containers_CopyInServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("header", "the first message must carry it"))
	}
	n, err := v.s.CopyIn(h.GetContainerId(), h.GetPath(), h.GetMode(), h.GetSize(), &dataReader{next: func() ([]byte, bool, error) {
		m, err := stream.Recv()
		return m.GetData(), m.GetHeader() != nil, err
	}})
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	return stream.SendAndClose(&containersv1.CopyInResponse{Written: n})
}

// dataReader reads a client stream's data messages as a byte stream;
// next returns a message's data and whether it carried a header, which
// only the first may.
type dataReader struct {
	next func() (data []byte, header bool, err error)
	buf  []byte
}

func (r *dataReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		data, header, err := r.next()
		if err != nil {
			return 0, err
		}
		if header {
			return 0, errdefs.InvalidArgument("header", "sent twice")
		}
		r.buf = data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (v *ContainersService) CopyInArchive(stream containersv1.Containers_CopyInArchiveServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if h == nil {
		return errgrpc.ToGRPC(errdefs.InvalidArgument("header", "the first message must carry it"))
	}
	res, err := v.s.CopyInArchive(h.GetContainerId(), h.GetPath(), ArchiveIn{
		SourceName:   h.GetSourceName(),
		ContentsOnly: h.GetContentsOnly(),
		Archive:      h.GetArchive(),
		KeepSetID:    h.GetKeepSetId(),
	}, &dataReader{next: func() ([]byte, bool, error) {
		m, err := stream.Recv()
		return m.GetData(), m.GetHeader() != nil, err
	}})
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	return stream.SendAndClose(&containersv1.CopyInArchiveResponse{Entries: int64(res.Entries), Bytes: res.Bytes})
}

func (v *ContainersService) CopyOutArchive(req *containersv1.CopyOutArchiveRequest, stream containersv1.Containers_CopyOutArchiveServer) error {
	_, err := v.s.CopyOutArchive(req.GetContainerId(), req.GetPath(), archiveOutWriter{stream})
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	return nil
}

// archiveOutWriter sends each write as one CopyOutArchive message (the
// writer above it buffers to copyOutChunk).
type archiveOutWriter struct {
	stream containersv1.Containers_CopyOutArchiveServer
}

func (w archiveOutWriter) Write(p []byte) (int, error) {
	if err := w.stream.Send(&containersv1.CopyOutArchiveResponse{Data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

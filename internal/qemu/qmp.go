package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// ErrDisconnected is the error of every call on a QMP client whose
// connection has ended: closed by Close, or by QEMU, usually because it
// exited.
var ErrDisconnected = errors.New("qmp: disconnected")

// QMPError is an error reply from QEMU.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// Event is an asynchronous QMP event.
type Event struct {
	Name string
	Data json.RawMessage
	Time time.Time
}

// eventBuffer is how many events wait for a reader before new ones are
// dropped.
const eventBuffer = 64

// Client is a QMP connection, ready for commands. It is safe for
// concurrent use: replies are matched to commands by id.
type Client struct {
	conn    net.Conn
	version json.RawMessage
	events  chan Event

	wmu sync.Mutex // serializes writes

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	err     error         // why the connection ended, set once
	done    chan struct{} // closed when the connection has ended
}

type reply struct {
	ret json.RawMessage
	err *QMPError
}

// message is any message QEMU sends: a greeting, a reply or an event.
type message struct {
	QMP *struct {
		Version json.RawMessage `json:"version"`
	} `json:"QMP"`
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     *QMPError       `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Dial connects to the QMP socket at path, reads QEMU's greeting and
// leaves capabilities negotiation mode.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	return newClient(ctx, conn)
}

// newClient runs the handshake on conn and takes ownership of it.
func newClient(ctx context.Context, conn net.Conn) (*Client, error) {
	// QEMU accepts one monitor client at a time and leaves others waiting
	// for a greeting that never comes, so the greeting must honour ctx.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	dec := json.NewDecoder(conn)
	var greeting message
	err := dec.Decode(&greeting)
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting: %w", err)
	}
	if greeting.QMP == nil {
		conn.Close()
		return nil, errors.New("qmp: first message is not a greeting")
	}
	c := &Client{
		conn:    conn,
		version: greeting.QMP.Version,
		events:  make(chan Event, eventBuffer),
		pending: make(map[uint64]chan reply),
		done:    make(chan struct{}),
	}
	go c.readLoop(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Version is the "version" object of QEMU's greeting, verbatim.
func (c *Client) Version() json.RawMessage { return c.version }

// Events delivers QEMU's asynchronous events, and is closed when the
// connection ends. Events are advisory: when nobody reads, new events are
// dropped once the channel's buffer is full; query the state instead.
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed when the connection has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (wrapping ErrDisconnected), or nil.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Execute runs command with args (marshalled to JSON; nil for none) and
// unmarshals the reply's "return" value into result unless it is nil. An
// error reply is a *QMPError; a connection that ends first is
// ErrDisconnected.
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
	return c.execute(ctx, command, args, result, c.write)
}

// execute is Execute with the command sent by send (see ExecuteWithFile).
func (c *Client) execute(ctx context.Context, command string, args any, result any, send func(context.Context, []byte) error) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	c.nextID++
	id := c.nextID
	ch := make(chan reply, 1) // the reader never blocks on it
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: marshal arguments: %w", command, err)
	}
	if err := send(ctx, append(b, '\n')); err != nil {
		forget()
		return fmt.Errorf("qmp %s: %w", command, err)
	}

	select {
	case r := <-ch:
		return r.decode(command, result)
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	case <-c.done:
		// The reader may have delivered the reply just before the
		// connection ended (QEMU answers "quit", then closes).
		select {
		case r := <-ch:
			return r.decode(command, result)
		default:
		}
		return fmt.Errorf("qmp %s: %w", command, c.Err())
	}
}

func (r reply) decode(command string, result any) error {
	if r.err != nil {
		return fmt.Errorf("qmp %s: %w", command, r.err)
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(r.ret, result); err != nil {
		return fmt.Errorf("qmp %s: decode reply: %w", command, err)
	}
	return nil
}

// write sends one message. A write cut short leaves half a message on the
// stream, so any write error ends the connection.
func (c *Client) write(ctx context.Context, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := ctx.Err(); err != nil {
		// Before a byte is written: the monitor is as it was.
		return err
	}
	deadline, _ := ctx.Deadline() // zero: none
	if err := c.conn.SetWriteDeadline(deadline); err != nil {
		c.fail(err)
		return c.Err()
	}
	return c.wrote(c.conn.Write(b))
}

// wrote judges a write of a command that wrote n bytes: a deadline that
// passed before any byte went out leaves the stream whole and the monitor
// usable for the next caller; any other failure, or a command cut in
// two, ends the connection (what QEMU would read next is garbage).
func (c *Client) wrote(n int, err error) error {
	if err == nil {
		return nil
	}
	if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("qmp: %w", context.DeadlineExceeded)
	}
	c.fail(err)
	return c.Err()
}

func (c *Client) readLoop(dec *json.Decoder) {
	defer close(c.events) // the reader is the only sender
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			c.fail(err)
			return
		}
		switch {
		case m.Event != "":
			ev := Event{
				Name: m.Event,
				Data: m.Data,
				Time: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000),
			}
			select {
			case c.events <- ev:
			default: // nobody listens; see Events
			}
		case m.ID != nil:
			// Replies carry our numeric id back. One without an id
			// answers a request QEMU could not parse; we send none.
			id, err := strconv.ParseUint(string(m.ID), 10, 64)
			if err != nil {
				continue
			}
			c.mu.Lock()
			ch, ok := c.pending[id]
			delete(c.pending, id)
			c.mu.Unlock()
			if ok {
				ch <- reply{ret: m.Return, err: m.Error}
			}
		}
	}
}

// fail ends the connection for the first reason given; calls waiting for
// replies see c.done and return that reason.
func (c *Client) fail(cause error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = fmt.Errorf("%w: %w", ErrDisconnected, cause)
	c.pending = nil
	c.conn.Close() // stops the reader, which then closes events
	close(c.done)
}

// Close ends the connection. Calls in flight return ErrDisconnected.
func (c *Client) Close() error {
	c.fail(net.ErrClosed)
	return nil
}

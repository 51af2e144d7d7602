package dgram

import (
	"bytes"
	"net"
	"testing"
)

func TestRead(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := net.DialUDP("udp", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]byte{[]byte("small"), bytes.Repeat([]byte{7}, 60000), {}} {
		if _, err := s.Write(want); err != nil {
			t.Fatal(err)
		}
		got, err := Read(rc)
		if err != nil || !bytes.Equal(got, want) || cap(got) != len(want) {
			t.Errorf("Read = %d bytes (cap %d), %v; want the %d-byte datagram in a buffer of its size", len(got), cap(got), err, len(want))
		}
	}
}

package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cabinvm/cabin/api/concierge"
)

// protoJSON is how every --json output is encoded: with the .proto field
// names (so they match the .proto files and the daemon's error messages,
// which name fields like memory_mib), and with every field, zero or not, so
// scripts can rely on a key being there. As in all protojson, 64-bit
// integers are strings and enums are their names.
func protoJSON(m proto.Message) ([]byte, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s as JSON: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return raw, nil
}

// marshalJSON encodes m as indented JSON. protojson deliberately varies its
// whitespace between runs; re-indenting makes the output stable.
func marshalJSON(m proto.Message) ([]byte, error) {
	raw, err := protoJSON(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return nil, fmt.Errorf("indent JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// marshalJSONLine encodes m as JSON on a single line, for streams of
// events read one line at a time.
func marshalJSONLine(m proto.Message) ([]byte, error) {
	raw, err := protoJSON(m)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, fmt.Errorf("compact JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// writeJSONArray writes ms as one indented JSON array ("[]" when empty).
func writeJSONArray[M proto.Message](w io.Writer, ms []M) error {
	var buf bytes.Buffer
	buf.WriteString("[")
	for i, m := range ms {
		raw, err := protoJSON(m)
		if err != nil {
			return err
		}
		if i > 0 {
			buf.WriteString(",")
		}
		buf.Write(raw)
	}
	buf.WriteString("]")
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
		return fmt.Errorf("indent JSON: %w", err)
	}
	out.WriteString("\n")
	_, err := w.Write(out.Bytes())
	return err
}

// writeJSON writes m as one indented JSON object.
func writeJSON(w io.Writer, m proto.Message) error {
	b, err := marshalJSON(m)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// enumWord turns an enum value name like VM_STATUS_RUNNING into "running":
// the prefix is dropped and the rest lower-cased, for human output.
func enumWord(name, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(name, prefix))
}

func statusWord(s concierge.VmStatus) string {
	return enumWord(s.String(), "VM_STATUS_")
}

// vmStatus is the status of a listed VM; the top-level field is the one
// ListVms documents, VmInfo's the fallback.
func vmStatus(v *concierge.ExtendedVmInfo) concierge.VmStatus {
	if s := v.GetStatus(); s != concierge.VmStatus_VM_STATUS_UNKNOWN {
		return s
	}
	return v.GetVmInfo().GetStatus()
}

// formatBytes prints a byte count in binary units with at most one
// decimal: 512 MiB, 1.5 GiB, 300 B.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := -1
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[i]
}

// dash prints zero values as "-", which reads as "not known" in a table.
func dash[T comparable](v T, format func(T) string) string {
	var zero T
	if v == zero {
		return "-"
	}
	return format(v)
}

func itoa[T int32 | int64 | uint32](v T) string { return strconv.FormatInt(int64(v), 10) }

// formatIPv4 prints a VmInfo.ipv4_address, which is in network byte order:
// its little-endian bytes, in order, are the address.
func formatIPv4(v uint32) string {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return net.IP(b[:]).String()
}

// writeVMTable writes the vm list table. An OWNER column appears only when
// some VM has an owner, since most hosts have none.
func writeVMTable(w io.Writer, vms []*concierge.ExtendedVmInfo) error {
	withOwner := false
	for _, v := range vms {
		if v.GetOwnerId() != "" {
			withOwner = true
		}
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := "NAME\tSTATUS\tPID\tCID\tMEMORY\tIPV4"
	if withOwner {
		header += "\tOWNER"
	}
	fmt.Fprintln(tw, header)
	for _, v := range vms {
		info := v.GetVmInfo()
		row := strings.Join([]string{
			v.GetName(),
			statusWord(vmStatus(v)),
			dash(info.GetPid(), itoa[int32]),
			dash(info.GetCid(), itoa[int64]),
			dash(info.GetAllocatedMemory(), formatBytes),
			dash(info.GetIpv4Address(), formatIPv4),
		}, "\t")
		if withOwner {
			row += "\t" + orDash(v.GetOwnerId())
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

// writeVMInfo writes one VM as aligned "KEY value" lines.
func writeVMInfo(w io.Writer, v *concierge.ExtendedVmInfo) error {
	info := v.GetVmInfo()
	rows := [][2]string{
		{"NAME", v.GetName()},
		{"OWNER", orDash(v.GetOwnerId())},
		{"STATUS", statusWord(vmStatus(v))},
		{"PID", dash(info.GetPid(), itoa[int32])},
		{"CID", dash(info.GetCid(), itoa[int64])},
		{"MEMORY", dash(info.GetAllocatedMemory(), formatBytes)},
		{"IPV4", dash(info.GetIpv4Address(), formatIPv4)},
		{"TYPE", enumWord(info.GetVmType().String(), "")},
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

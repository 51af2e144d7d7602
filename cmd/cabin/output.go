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
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	cabinv1 "github.com/cabinvm/cabin/api/cabin/v1"
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

// vmStateWord is a VM's state for people: "running", "unreachable".
func vmStateWord(s cabinv1.VmState) string {
	return enumWord(s.String(), "VM_STATE_")
}

// accelWord is an accelerator for people: "kvm", "tcg".
func accelWord(a cabinv1.Accelerator) string {
	return enumWord(a.String(), "ACCELERATOR_")
}

// writeVMTable writes the vm list table, then a line for each VM that has
// a problem (one cabind cannot control). An OWNER column appears only when
// some VM has an owner, since most hosts have none.
func writeVMTable(w io.Writer, vms []*cabinv1.Vm) error {
	withOwner := false
	for _, v := range vms {
		if v.GetOwnerId() != "" {
			withOwner = true
		}
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := "NAME\tSTATE\tPID\tCID\tCPUS\tMEMORY\tACCEL\tIPV4"
	if withOwner {
		header += "\tOWNER"
	}
	fmt.Fprintln(tw, header)
	for _, v := range vms {
		row := strings.Join([]string{
			v.GetName(),
			vmStateWord(v.GetState()),
			dash(v.GetPid(), itoa[int32]),
			dash(v.GetCid(), itoa[uint32]),
			dash(v.GetCpus(), itoa[int32]),
			dash(int64(v.GetMemoryMib())<<20, formatBytes),
			accelWord(v.GetAccelerator()),
			orDash(v.GetIpv4Address()),
		}, "\t")
		if withOwner {
			row += "\t" + orDash(v.GetOwnerId())
		}
		fmt.Fprintln(tw, row)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, v := range vms {
		if p := v.GetProblem(); p != "" {
			if _, err := fmt.Fprintf(w, "%s is %s: %s\n", v.GetName(), vmStateWord(v.GetState()), p); err != nil {
				return err
			}
		}
		if v.GetState() == cabinv1.VmState_VM_STATE_STOPPED {
			if _, err := fmt.Fprintf(w, "%s stopped %s: %s\n", v.GetName(), stoppedWhen(v), stoppedWhy(v)); err != nil {
				return err
			}
		}
	}
	return nil
}

// stoppedWhen is when a stopped VM's last run ended, for people.
func stoppedWhen(v *cabinv1.Vm) string {
	if v.GetStoppedAt() == nil {
		return "at an unknown time"
	}
	return v.GetStoppedAt().AsTime().Local().Format(time.RFC3339)
}

// stoppedWhy is how a stopped VM's last run ended: cabind's words when it
// stopped on its own, else the reason.
func stoppedWhy(v *cabinv1.Vm) string {
	if d := v.GetStopDetail(); d != "" {
		return d
	}
	return enumWord(v.GetStopReason().String(), "")
}

// writeVMInfo writes one VM as aligned "KEY value" lines.
func writeVMInfo(w io.Writer, v *cabinv1.Vm) error {
	rows := [][2]string{
		{"NAME", v.GetName()},
		{"OWNER", orDash(v.GetOwnerId())},
		{"STATE", vmStateWord(v.GetState())},
	}
	if p := v.GetProblem(); p != "" {
		rows = append(rows, [2]string{"PROBLEM", p})
	}
	started := "-"
	if v.GetStartedAt() != nil {
		started = v.GetStartedAt().AsTime().Local().Format(time.RFC3339)
	}
	rows = append(rows,
		[2]string{"PID", dash(v.GetPid(), itoa[int32])},
		[2]string{"CID", dash(v.GetCid(), itoa[uint32])},
		[2]string{"CPUS", dash(v.GetCpus(), itoa[int32])},
		[2]string{"MEMORY", dash(int64(v.GetMemoryMib())<<20, formatBytes)},
		[2]string{"ACCEL", accelWord(v.GetAccelerator())},
		[2]string{"IPV4", orDash(v.GetIpv4Address())},
		[2]string{"STARTED", started},
		[2]string{"TYPE", enumWord(v.GetVmType().String(), "")},
	)
	if v.GetState() == cabinv1.VmState_VM_STATE_STOPPED {
		rows = append(rows, [2]string{"STOPPED", stoppedWhen(v)}, [2]string{"REASON", stoppedWhy(v)})
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

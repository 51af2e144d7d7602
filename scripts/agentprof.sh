#!/bin/sh
# agentprof.sh cuts the guest agent's CPU profiles out of a VM's console
# log. It is for diagnosis only: an agent built with the agentprof tag
#   CGO_ENABLED=0 go build -trimpath -tags grpcnotrace,agentprof \
#       -o DIR/cabin-agent ./cmd/cabin-agent
# (and cabind started with --agent DIR/cabin-agent, or cabin-bench -bin DIR
# -keep) profiles itself in 8-second windows and writes each window's
# profile to its console, base64 between markers, with the guest's
# /proc/stat before and after. Read them with go tool pprof.
#
# usage: scripts/agentprof.sh CONSOLE.LOG OUTDIR
set -eu
[ $# -eq 2 ] || { echo "usage: $0 CONSOLE.LOG OUTDIR" >&2; exit 2; }
log=$1 out=$2
mkdir -p "$out"
tr -d '\r' < "$log" | awk -v out="$out" '
	/CABIN-PPROF-BEGIN [0-9]+$/ { n = $NF; f = sprintf("%s/cpu%03d.b64", out, n); printf "" > f; next }
	/CABIN-PPROF-END [0-9]+$/ { close(f); f = ""; next }
	/CABIN-STAT / { print > (out "/stat.txt"); next }
	f != "" { print > f }
'
for b in "$out"/cpu*.b64; do
	[ -e "$b" ] || continue
	if base64 -d < "$b" > "${b%.b64}.pprof" 2>/dev/null; then
		rm "$b"
	else
		echo "$0: ${b##*/}: cut short (the VM stopped mid-window?)" >&2
		rm -f "$b" "${b%.b64}.pprof"
	fi
done
ls "$out"

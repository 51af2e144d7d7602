#!/usr/bin/env bash
# cabin's main job on the default setup: start cabind (unless one is
# running), boot the default VM and run commands inside it.
set -euo pipefail
cd "$(dirname "$0")/.."

export CABIN_SOCKET=${CABIN_SOCKET:-/run/cabin/cabind.sock}
state_dir=${CABIN_STATE_DIR:-/var/lib/cabin}
log=${CABIN_LOG:-/run/cabin/cabind.log}
cabin=./bin/cabin

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

if ! "$cabin" vm list >/dev/null 2>&1; then
  mkdir -p "$(dirname "$log")"
  echo "starting cabind (log: $log)"
  setsid ./bin/cabind --socket "$CABIN_SOCKET" --state-dir "$state_dir" >>"$log" 2>&1 < /dev/null &
  for _ in $(seq 50); do
    "$cabin" vm list >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

say cabin image build
"$cabin" image build
say cabin vm start default
"$cabin" vm start default
say cabin vm list
"$cabin" vm list
say cabin exec default -- uname -a
"$cabin" exec default -- uname -a
say "cabin exec default -- sh -c 'cat /proc/cpuinfo | head'"
"$cabin" exec default -- sh -c 'cat /proc/cpuinfo | head'
say "cabin exec default -- sh -c 'echo hello from \$(hostname); exit 3'"
rc=0
"$cabin" exec default -- sh -c 'echo hello from $(hostname); exit 3' || rc=$?
echo "(exit status $rc, passed through from the guest)"
say "cabin run default -- sh -c 'echo hello from \$(hostname); ps -o pid,args; ls /'"
"$cabin" run default -- sh -c 'echo hello from $(hostname); ps -o pid,args; ls /'
echo "(an OCI container in the VM: its own namespaces, a read-only busybox root)"

cat <<EOT

The VM keeps running. Try:
  $cabin exec -it default sh        # a shell inside it
  $cabin run -it default sh         # a shell in a new container inside it
  $cabin vm logs default            # its console
  $cabin events                     # watch VMs start and stop
  $cabin vm stop default            # stop it
EOT

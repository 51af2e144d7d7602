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
else
  # A cabind of another build (an older checkout, a deleted clone) would
  # run the rest with its own code: say so rather than show its output as
  # this checkout's.
  versions=$("$cabin" version --json 2>/dev/null || true)
  client=$(printf '%s' "$versions" | sed -n 's/.*"client": *"\([^"]*\)".*/\1/p')
  daemon=$(printf '%s' "$versions" | sed -n 's/.*"cabind": *"\([^"]*\)".*/\1/p')
  if [ -n "$daemon" ] && [ "$daemon" != "$client" ]; then
    echo "note: the cabind already at $CABIN_SOCKET is version $daemon, not this checkout's $client;"
    echo "      stop it (its VMs keep running) to have this checkout's cabind started here."
  fi
fi

say cabin image build
"$cabin" image build
say cabin vm start default
"$cabin" vm start default
say cabin vm list
"$cabin" vm list
say cabin vm exec default -- uname -a
"$cabin" vm exec default -- uname -a
say "cabin vm exec default -- sh -c 'cat /proc/cpuinfo | head'"
"$cabin" vm exec default -- sh -c 'cat /proc/cpuinfo | head'
say "cabin vm exec default -- sh -c 'echo hello from \$(hostname); exit 3'"
rc=0
"$cabin" vm exec default -- sh -c 'echo hello from $(hostname); exit 3' || rc=$?
echo "(exit status $rc, passed through from the guest)"
say "cabin run --rm busybox sh -c 'echo hello from \$(hostname); ps -o pid,args; ls /'"
"$cabin" run --rm busybox sh -c 'echo hello from $(hostname); ps -o pid,args; ls /'
echo "(an OCI container in the default VM: its own namespaces, a writable layer over the busybox root cabind builds)"
say "cabin run -d --name ticker busybox sh -c 'for i in 1 2 3; do echo tick \$i; sleep 1; done; sleep 600'"
"$cabin" run -d --name ticker busybox sh -c 'for i in 1 2 3; do echo tick $i; sleep 1; done; sleep 600'
say cabin ps
"$cabin" ps
say cabin exec ticker -- ps -o pid,args
"$cabin" exec ticker -- ps -o pid,args
sleep 3
say cabin logs -t ticker
"$cabin" logs -t ticker
say cabin stats --no-stream ticker
"$cabin" stats --no-stream ticker || true
say cabin stop -t 1 ticker
"$cabin" stop -t 1 ticker
say cabin rm ticker
"$cabin" rm ticker
echo "(a detached container: its output kept by the VM's agent, the everyday verbs of a container tool)"

# An image of one's own: a `docker save` tarball made here from the
# host's busybox-static, imported into cabind's store (root's to change).
if [ -x /bin/busybox ] && [ "$(id -u)" -eq 0 ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/root/bin" "$work/root/etc" "$work/root/tmp" "$work/root/home/demo" "$work/img"
  cp /bin/busybox "$work/root/bin/"
  for a in sh echo cat ls id pwd hostname ps uname; do ln -s busybox "$work/root/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000:demo:/home/demo:/bin/sh\n' >"$work/root/etc/passwd"
  printf 'root:x:0:\ndemo:x:1000:\n' >"$work/root/etc/group"
  tar -C "$work/root" --numeric-owner --owner=0 --group=0 -cf "$work/layer.tar" bin etc tmp home
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  mkdir "$work/img/$diff" && mv "$work/layer.tar" "$work/img/$diff/layer.tar"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","GREETING=hello from an image"],"User":"demo","WorkingDir":"/home/demo","Entrypoint":["/bin/sh","-c"],"Cmd":["echo $GREETING, as $(id -un) in $(pwd)"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" >"$work/config.json"
  cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/img/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["cabin-demo/hello:latest"],"Layers":["%s/layer.tar"]}]' "$cfg" "$diff" >"$work/img/manifest.json"
  tar -C "$work/img" -cf "$work/hello.tar" manifest.json "$cfg.json" "$diff"
  say cabin image import hello.tar
  "$cabin" image import "$work/hello.tar"
  say cabin run --rm cabin-demo/hello
  "$cabin" run --rm cabin-demo/hello
  echo "(the image's entrypoint, cmd, env, user and working dir, as docker run applies them)"
fi

cat <<EOT

The VM keeps running. Try:
  $cabin vm exec -it default sh     # a shell inside it
  $cabin run -it --rm busybox sh    # a shell in a new container inside it
  $cabin vm logs default            # its console
  $cabin events                     # watch VMs start and stop
  $cabin vm stop default            # stop it
EOT

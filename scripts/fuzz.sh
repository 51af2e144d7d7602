#!/usr/bin/env bash
# Runs every native Go fuzz target in the module (each `func FuzzX` in a
# _test.go file) for a bounded time, one after the other, and stops at the
# first that fails, saying which. A failing input is kept where Go's fuzzer
# puts it, testdata/fuzz/FuzzX/ in the target's package, so that plain
# `go test` runs it from then on.
#
# FUZZTIME is the fuzzing time per target: seconds (10) or anything
# -fuzztime takes (10s, 5000x). The default, 5 s for each of about 15
# targets, makes the whole run take about 1.5 to 2 minutes on 2 cores once
# the build cache is warm: -fuzztime counts fuzzing only, not the build of
# each package's instrumented test binary, which the first run after a
# change pays for (several minutes from a cold cache), nor each target's
# start (a few seconds: workers, the seed corpus).
set -euo pipefail

cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-5}
case $fuzztime in
*[!0-9]*) ;;
*) fuzztime=${fuzztime}s ;;
esac

# Package directory and name of every fuzz target.
targets=()
while IFS=: read -r file line; do
  name=${line#func }
  targets+=("$(dirname "$file") ${name%%(*}")
done < <(grep -rE --include='*_test.go' --exclude-dir=testdata --exclude-dir=.git '^func Fuzz[A-Za-z0-9_]*\(' . | sort)
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no fuzz targets found" >&2
  exit 1
fi

start=$SECONDS
for t in "${targets[@]}"; do
  dir=${t% *}
  name=${t#* }
  corpus=$dir/testdata/fuzz/$name
  before=$(ls "$corpus" 2>/dev/null | wc -l || true)
  echo "fuzz: $name in $dir for $fuzztime"
  log=$(mktemp)
  # Minimizing each new input may take up to a minute by default, which
  # would eat a short run whole (targets with goroutines see new coverage
  # often); a bounded number of tries keeps the time for fuzzing.
  if go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime 100x "$dir" >"$log" 2>&1; then
    rm -f "$log"
    continue
  fi
  # Go before 1.27 may end a run that found nothing with a bare "context
  # deadline exceeded" when -fuzztime expires (a race in its coordinator,
  # golang.org/issue/75804). It writes no input; any real failure does.
  after=$(ls "$corpus" 2>/dev/null | wc -l || true)
  if [ "$after" -eq "$before" ] && grep -qx '    context deadline exceeded' "$log" &&
    [ "$(grep -c -- '--- FAIL' "$log")" -eq 1 ]; then
    echo "fuzz: $name: stopped by Go's -fuzztime race (golang.org/issue/75804), no failing input: not a failure"
    rm -f "$log"
    continue
  fi
  grep -v '^fuzz: elapsed' "$log" >&2 || true
  rm -f "$log"
  echo "fuzz: FAIL: $name in $dir" >&2
  exit 1
done
echo "fuzz: ${#targets[@]} targets passed in $((SECONDS - start)) s"

#!/usr/bin/env bash
# Runs every Go fuzz target in the module for FUZZTIME each (default 10s).
# A crasher is written to the package's testdata/fuzz/ and the run fails;
# keep the file: it becomes a regression test that `go test` always runs.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10s}
status=0
count=0
while IFS=: read -r file target; do
  pkg="./$(dirname "$file")"
  count=$((count + 1))
  echo "== $target ($pkg, $FUZZTIME)"
  if ! "$GO" test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg"; then
    status=1
  fi
done < <(git ls-files '*_test.go' | xargs grep -oE '^func Fuzz[A-Za-z0-9_]+' | sed 's/func //' | sort)
echo "== $count fuzz targets run for $FUZZTIME each"
exit $status

#!/usr/bin/env bash
# Runs every Fuzz* target in the module for FUZZTIME each (default 30s).
# Targets live in the package they test; this script finds them.
#   FUZZTIME=5m fuzz/run.sh            # all targets
#   fuzz/run.sh FuzzSegmentRecovery    # only targets matching a pattern
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME="${FUZZTIME:-30s}"
PATTERN="${1:-.}"
found=0
while IFS=: read -r file line; do
	fn=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$line")
	[[ "$fn" =~ $PATTERN ]] || continue
	pkg="./$(dirname "$file")"
	echo "==> $fn in $pkg for $FUZZTIME"
	go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "${FUZZMINIMIZETIME:-5s}" "$pkg"
	found=$((found + 1))
done < <(grep -rHE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(' . | sed -E 's/^\.\///; s/:(func )/:\1/' | cut -d: -f1,2- )
if [[ $found -eq 0 ]]; then
	echo "no fuzz targets match $PATTERN" >&2
	exit 1
fi
echo "ran $found fuzz target(s)"

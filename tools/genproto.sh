#!/usr/bin/env bash
# genproto.sh [--check]: regenerates the Go code of every .proto file under
# internal/proto (the one place protobuf sources live) with Debian's protoc and
# the protoc-gen-go / protoc-gen-go-grpc versions pinned as `tool` dependencies
# in go.mod. With --check it generates into a temporary directory and fails if
# the result differs from the checked-in code (CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
root=internal/proto
mapfile -t protos < <(cd "$root" && find . -name '*.proto' | sed 's|^\./||' | sort)
if [[ ${#protos[@]} -eq 0 ]]; then
	echo "genproto: no .proto files under $root"
	exit 0
fi
tools/install-deb.sh protoc protobuf-compiler
bin="$PWD/.cache/bin"
mkdir -p "$bin"
go build -o "$bin/" google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
out="$root"
if [[ "${1:-}" == "--check" ]]; then
	out=$(mktemp -d)
	trap 'rm -rf "$out"' EXIT
fi
(cd "$root" && protoc -I . \
	--plugin=protoc-gen-go="$bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
	--go_out="$( [[ "$out" = /* ]] && echo "$out" || echo . )" --go_opt=paths=source_relative \
	--go-grpc_out="$( [[ "$out" = /* ]] && echo "$out" || echo . )" --go-grpc_opt=paths=source_relative \
	"${protos[@]}")
if [[ "${1:-}" == "--check" ]]; then
	status=0
	while IFS= read -r f; do
		rel="${f#"$out"/}"
		if ! cmp -s "$f" "$root/$rel"; then
			echo "genproto: $root/$rel is stale: run 'make generate' and commit the result" >&2
			status=1
		fi
	done < <(find "$out" -name '*.go' | sort)
	while IFS= read -r f; do
		rel="${f#"$root"/}"
		[[ -f "$out/$rel" ]] || { echo "genproto: $f has no .proto source: delete it" >&2; status=1; }
	done < <(find "$root" -name '*.pb.go' | sort)
	[[ $status -eq 0 ]] && echo "genproto: generated code is up to date"
	exit $status
fi
echo "genproto: generated ${#protos[@]} file(s)"

#!/usr/bin/env bash
# install-s3-servers.sh: builds the two S3 servers that the object-storage tests
# run against (engines/objstore/s3test), into $QUIRE_S3_BIN (default
# <repo>/.cache/bin), skipping each binary that is already there:
#
#   minio      github.com/minio/minio            (about 4 minutes once)
#   versitygw  github.com/versity/versitygw/cmd/versitygw (about 90 s once)
#
# They are test tools, not dependencies of Quire's module: `go install
# pkg@version` builds them in module mode outside this module, so go.mod and
# go.sum are never touched. The versions are pinned here and nowhere else.
set -euo pipefail

MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c" # newest the Go module proxy served on 2026-11-25
VERSITYGW_VERSION="v1.8.0"

repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${QUIRE_S3_BIN:-$repo/.cache/bin}"
mkdir -p "$bin"
go="${GO:-go}"

install() { # install NAME PACKAGE@VERSION
	local name="$1" pkg="$2"
	if [[ -x "$bin/$name" ]]; then
		return 0
	fi
	echo "building $pkg into $bin (once; takes minutes)" >&2
	# Outside the repo so no go.work or go.mod of Quire's applies; -mod=mod and
	# the empty GOFLAGS keep a caller's flags (e.g. -mod=vendor) out of it.
	(cd / && GOBIN="$bin" GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0 "$go" install "$pkg")
	test -x "$bin/$name"
}

install minio "github.com/minio/minio@$MINIO_VERSION"
install versitygw "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"

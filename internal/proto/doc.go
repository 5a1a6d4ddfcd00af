// Package proto is the one place Quire's protobuf sources live, with the Go
// code generated from them beside each .proto file (package <service>v1, for
// example internal/proto/journal/v1). Regenerate with `make generate`;
// `make test` fails when the checked-in code is stale.
package proto

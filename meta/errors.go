package meta

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors returned by the store, the server and the client. Test with
// errors.Is; the same sentinel comes back whether the call was served in
// process or over gRPC (see the code table below).
var (
	// ErrNotFound is returned by Get and Delete when the key does not exist.
	ErrNotFound = errors.New("meta: key not found")
	// ErrVersionMismatch is returned by a Put or Delete with IfVersion when
	// the key's version differs; the error is a *VersionMismatchError.
	ErrVersionMismatch = errors.New("meta: version mismatch")
	// ErrCompacted is returned to a watcher whose next revision is no longer
	// in the history: it must List again and watch from the list's revision.
	ErrCompacted = errors.New("meta: revision compacted")
	// ErrLeaseNotFound is returned when a lease does not exist (never
	// granted, revoked, or expired).
	ErrLeaseNotFound = errors.New("meta: lease not found")
	// ErrNotLeader is returned when the node that got a request cannot serve
	// it because it is not the leader and cannot reach one. The request was
	// not applied: retrying it is safe.
	ErrNotLeader = errors.New("meta: not the leader")
	// ErrAmbiguous is returned when a write may or may not have been applied
	// (leadership lost after the write was proposed, a connection broken
	// while waiting for the answer). Read back before retrying a CAS.
	ErrAmbiguous = errors.New("meta: outcome unknown")
	// ErrInvalid is returned for a bad argument (empty key, oversized value,
	// bad TTL).
	ErrInvalid = errors.New("meta: invalid argument")
	// ErrStopped is returned after Stop, or before Start. Nothing was applied.
	ErrStopped = errors.New("meta: server stopped")
)

// VersionMismatchError is the error of a failed CAS. It matches
// ErrVersionMismatch.
type VersionMismatchError struct {
	Key string
	// Expected is the version the caller asked for, Current the key's
	// version (0 when the key does not exist).
	Expected, Current uint64
}

func (e *VersionMismatchError) Error() string {
	return fmt.Sprintf("meta: version mismatch on %q: expected %d, current %d", e.Key, e.Expected, e.Current)
}

// Is makes errors.Is(err, ErrVersionMismatch) true.
func (e *VersionMismatchError) Is(target error) bool { return target == ErrVersionMismatch }

// NotLeaderError is ErrNotLeader with the leader this node knows of, if any.
type NotLeaderError struct {
	LeaderID   uint64
	LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderAddr == "" {
		return "meta: not the leader (no leader known)"
	}
	return fmt.Sprintf("meta: not the leader (leader is %d@%s)", e.LeaderID, e.LeaderAddr)
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// errorDomain is the ErrorInfo domain of meta's gRPC errors.
const errorDomain = "meta.quire"

// The code table: sentinel ↔ ErrorInfo reason ↔ gRPC code.
var errorCodes = []struct {
	err    error
	reason string
	code   codes.Code
}{
	{ErrNotFound, "NOT_FOUND", codes.NotFound},
	{ErrVersionMismatch, "VERSION_MISMATCH", codes.FailedPrecondition},
	{ErrCompacted, "COMPACTED", codes.OutOfRange},
	{ErrLeaseNotFound, "LEASE_NOT_FOUND", codes.NotFound},
	{ErrNotLeader, "NOT_LEADER", codes.Unavailable},
	{ErrAmbiguous, "AMBIGUOUS", codes.Unavailable},
	{ErrInvalid, "INVALID", codes.InvalidArgument},
	{ErrStopped, "STOPPED", codes.Unavailable},
}

// toStatus converts an error of this package into a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, err.Error())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	for _, c := range errorCodes {
		if !errors.Is(err, c.err) {
			continue
		}
		info := &errdetails.ErrorInfo{Domain: errorDomain, Reason: c.reason, Metadata: map[string]string{}}
		var vm *VersionMismatchError
		var nl *NotLeaderError
		switch {
		case errors.As(err, &vm):
			info.Metadata["key"] = vm.Key
			info.Metadata["expected"] = strconv.FormatUint(vm.Expected, 10)
			info.Metadata["current"] = strconv.FormatUint(vm.Current, 10)
		case errors.As(err, &nl):
			if nl.LeaderAddr != "" {
				info.Metadata["leader_id"] = strconv.FormatUint(nl.LeaderID, 10)
				info.Metadata["leader_addr"] = nl.LeaderAddr
			}
		}
		st, derr := status.New(c.code, err.Error()).WithDetails(info)
		if derr != nil {
			return status.Error(c.code, err.Error())
		}
		return st.Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// fromStatus converts a gRPC error back into this package's errors. An
// Unavailable status without meta's ErrorInfo (the connection failed) is
// returned as is; the client decides how to classify it.
func fromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Canceled:
		return fmt.Errorf("%w: %s", context.Canceled, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%w: %s", context.DeadlineExceeded, st.Message())
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.Domain != errorDomain {
			continue
		}
		md := info.Metadata
		switch info.Reason {
		case "VERSION_MISMATCH":
			exp, _ := strconv.ParseUint(md["expected"], 10, 64)
			cur, _ := strconv.ParseUint(md["current"], 10, 64)
			return &VersionMismatchError{Key: md["key"], Expected: exp, Current: cur}
		case "NOT_LEADER":
			id, _ := strconv.ParseUint(md["leader_id"], 10, 64)
			return &NotLeaderError{LeaderID: id, LeaderAddr: md["leader_addr"]}
		}
		for _, c := range errorCodes {
			if c.reason == info.Reason {
				if st.Message() == c.err.Error() {
					return c.err
				}
				return fmt.Errorf("%w: %s", c.err, strings.TrimPrefix(st.Message(), c.err.Error()+": "))
			}
		}
	}
	return err
}

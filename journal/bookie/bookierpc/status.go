package bookierpc

import (
	"errors"
	"fmt"
	"hash/crc32"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie"
)

// castagnoli is the CRC-32C table of the crc32c fields.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the CRC-32C (Castagnoli) of p, as AddRequest.crc32c wants.
func CRC32C(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// statusOf maps a bookie error to the status the service answers with.
// ErrNoSuchLedger is tested before ErrNoSuchEntry, which it also matches.
func statusOf(err error) journalv1.Status {
	switch {
	case err == nil:
		return journalv1.Status_STATUS_OK
	case errors.Is(err, bookie.ErrNoSuchLedger):
		return journalv1.Status_STATUS_NO_SUCH_LEDGER
	case errors.Is(err, bookie.ErrNoSuchEntry):
		return journalv1.Status_STATUS_NO_SUCH_ENTRY
	case errors.Is(err, bookie.ErrLedgerFenced):
		return journalv1.Status_STATUS_FENCED
	case errors.Is(err, bookie.ErrEntryTooLarge):
		return journalv1.Status_STATUS_TOO_LARGE
	case errors.Is(err, bookie.ErrFailed):
		return journalv1.Status_STATUS_FAILED
	case errors.Is(err, bookie.ErrClosed):
		return journalv1.Status_STATUS_CLOSED
	case errors.Is(err, bookie.ErrCorrupt):
		return journalv1.Status_STATUS_CORRUPT
	}
	return journalv1.Status_STATUS_ERROR
}

// message is the detail sent with a status: "" for OK.
func message(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// ErrBadCRC is matched (errors.Is) by a *StatusError with STATUS_BAD_CRC,
// and returned by Client.ReadEntry when a payload read back does not match
// the crc32c the bookie sent with it.
var ErrBadCRC = errors.New("bookierpc: payload does not match its crc32c")

// StatusError is a bookie's answer other than OK: an outcome the bookie
// reported, as opposed to a gRPC error (deadline, broken connection,
// UNAVAILABLE), which says nothing about the data and must be treated like
// a timeout. errors.Is matches the journal/bookie sentinel of its status
// (bookie.ErrNoSuchEntry, bookie.ErrLedgerFenced, ...), so callers can test
// a remote outcome as they test a local one.
type StatusError struct {
	Status  journalv1.Status
	Message string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("bookie: %s", e.Status)
	}
	return fmt.Sprintf("bookie: %s: %s", e.Status, e.Message)
}

// Is matches the sentinel of e's status.
func (e *StatusError) Is(target error) bool {
	switch e.Status {
	case journalv1.Status_STATUS_NO_SUCH_LEDGER:
		return target == bookie.ErrNoSuchLedger || target == bookie.ErrNoSuchEntry
	case journalv1.Status_STATUS_NO_SUCH_ENTRY:
		return target == bookie.ErrNoSuchEntry
	case journalv1.Status_STATUS_FENCED:
		return target == bookie.ErrLedgerFenced
	case journalv1.Status_STATUS_TOO_LARGE:
		return target == bookie.ErrEntryTooLarge
	case journalv1.Status_STATUS_FAILED:
		return target == bookie.ErrFailed
	case journalv1.Status_STATUS_CLOSED:
		return target == bookie.ErrClosed
	case journalv1.Status_STATUS_CORRUPT:
		return target == bookie.ErrCorrupt
	case journalv1.Status_STATUS_BAD_CRC:
		return target == ErrBadCRC
	}
	return false
}

// StatusOf returns the bookie status err carries: OK for nil, the status of
// a *StatusError, and STATUS_UNSPECIFIED for any other error (a transport
// error, which is no answer from the bookie).
func StatusOf(err error) journalv1.Status {
	if err == nil {
		return journalv1.Status_STATUS_OK
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return journalv1.Status_STATUS_UNSPECIFIED
}

// errorOf turns a status from the wire into nil or a *StatusError.
func errorOf(st journalv1.Status, msg string) error {
	if st == journalv1.Status_STATUS_OK {
		return nil
	}
	return &StatusError{Status: st, Message: msg}
}

package bookie

import "errors"

// Errors returned by the bookie. Callers test them with errors.Is; several
// are class markers that wrap a cause (ErrFailed, ErrCorrupt,
// ErrCookieMismatch), so errors.Is also matches the underlying error.
var (
	// ErrNoSuchEntry is returned by ReadEntry when this bookie holds the
	// ledger but not the entry. It is an explicit negative: the recovery
	// protocol counts it, unlike a timeout or any other error.
	ErrNoSuchEntry = errors.New("bookie: no such entry")

	// ErrNoSuchLedger is returned by ReadEntry and ReadLAC when this bookie
	// knows nothing of the ledger (never added to, fenced or given a LAC, or
	// deleted). errors.Is(ErrNoSuchLedger, ErrNoSuchEntry) is true: for a
	// reader both are the same explicit negative.
	ErrNoSuchLedger error = &classError{msg: "bookie: no such ledger", class: ErrNoSuchEntry}

	// ErrLedgerFenced is returned (through done) by a non-recovery AddEntry
	// on a ledger that has been fenced.
	ErrLedgerFenced = errors.New("bookie: ledger fenced")

	// ErrCookieMismatch is returned by Open when the cookie in a data
	// directory is missing while the cookie store has one (a wiped disk),
	// or when the cookies disagree. The message names the mismatch.
	ErrCookieMismatch = errors.New("bookie: cookie mismatch")

	// ErrClosed is returned by every operation after Close was called.
	ErrClosed = errors.New("bookie: closed")

	// ErrCorrupt is returned when stored data fails its checksum or is
	// otherwise malformed (an entry-log record, an index value, a cookie).
	ErrCorrupt = errors.New("bookie: corrupt data")

	// ErrFailed is returned by every write after a journal write or sync
	// (or applying synced records to the entry logs and index) failed: the
	// bookie stopped accepting writes and never acknowledges what it could
	// not make durable. Reads keep working. The cause is wrapped as well.
	ErrFailed = errors.New("bookie: failed, not accepting writes")

	// ErrEntryTooLarge is returned (through done) by AddEntry when the
	// payload exceeds Options.MaxEntrySize.
	ErrEntryTooLarge = errors.New("bookie: entry too large")
)

// classError is a sentinel that also matches a broader class sentinel.
type classError struct {
	msg   string
	class error
}

func (e *classError) Error() string        { return e.msg }
func (e *classError) Is(target error) bool { return target == e.class }

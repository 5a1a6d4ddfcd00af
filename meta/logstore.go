package meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"

	"github.com/quiremq/quire/internal/vfs"
)

// LogStore is hashicorp/raft's LogStore and StableStore on one Pebble
// database. Every StoreLogs batch, DeleteRange and stable-store Set is a
// synced Pebble write: when it returns, the entries (or the vote, or the
// term) are on disk. The key layout is in the package doc ("Raft store").
type LogStore struct {
	db *pebble.DB

	mu          sync.RWMutex
	first, last uint64 // 0, 0 when the log is empty
}

var (
	_ raft.LogStore    = (*LogStore)(nil)
	_ raft.StableStore = (*LogStore)(nil)
)

// Key prefixes of the Raft store, and the encoding version of a log entry.
// Part of the on-disk format.
const (
	prefixLog    byte = 'l'
	prefixStable byte = 's'
	logFormatV1  byte = 1
)

// errStableNotFound is what hashicorp/raft expects (it compares the
// message) when a stable key is missing.
var errStableNotFound = errors.New("not found")

// OpenLogStore opens (creating if needed) the Raft store in dir on fs.
func OpenLogStore(fs vfs.FS, dir string, log *slog.Logger) (*LogStore, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("meta: creating %s: %w", dir, err)
	}
	db, err := pebble.Open(dir, &pebble.Options{
		FS:           fs,
		Logger:       pebbleLogger{log},
		MemTableSize: 8 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("meta: opening raft store %s: %w", dir, err)
	}
	s := &LogStore{db: db}
	if err := s.loadBounds(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the database.
func (s *LogStore) Close() error { return s.db.Close() }

func logKey(i uint64) []byte {
	k := make([]byte, 9)
	k[0] = prefixLog
	binary.BigEndian.PutUint64(k[1:], i)
	return k
}

func (s *LogStore) loadBounds() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLog}, UpperBound: []byte{prefixLog + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.first, s.last = 0, 0
	if it.First() {
		s.first = binary.BigEndian.Uint64(it.Key()[1:])
		it.Last()
		s.last = binary.BigEndian.Uint64(it.Key()[1:])
	}
	return it.Error()
}

// FirstIndex returns the first index in the log, 0 when it is empty.
func (s *LogStore) FirstIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.first, nil
}

// LastIndex returns the last index in the log, 0 when it is empty.
func (s *LogStore) LastIndex() (uint64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.last, nil
}

// GetLog reads entry index into log, or returns raft.ErrLogNotFound.
func (s *LogStore) GetLog(index uint64, log *raft.Log) error {
	v, closer, err := s.db.Get(logKey(index))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return err
	}
	defer closer.Close()
	if err := decodeLog(v, log); err != nil {
		return fmt.Errorf("meta: raft log entry %d: %w", index, err)
	}
	log.Index = index
	return nil
}

// StoreLog stores one entry.
func (s *LogStore) StoreLog(log *raft.Log) error { return s.StoreLogs([]*raft.Log{log}) }

// StoreLogs stores entries with one synced write.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	var buf []byte
	for _, l := range logs {
		buf = encodeLog(buf[:0], l)
		if err := b.Set(logKey(l.Index), buf, nil); err != nil {
			return err
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("meta: storing raft log: %w", err)
	}
	s.mu.Lock()
	if s.first == 0 || logs[0].Index < s.first {
		s.first = logs[0].Index
	}
	if l := logs[len(logs)-1].Index; l > s.last {
		s.last = l
	}
	s.mu.Unlock()
	return nil
}

// DeleteRange deletes entries min..max inclusive with one synced write.
func (s *LogStore) DeleteRange(min, max uint64) error {
	if err := s.db.DeleteRange(logKey(min), logKey(max+1), pebble.Sync); err != nil {
		return fmt.Errorf("meta: deleting raft log %d..%d: %w", min, max, err)
	}
	return s.loadBounds()
}

func stableKey(k []byte) []byte { return append([]byte{prefixStable}, k...) }

// Set stores a stable value with a synced write.
func (s *LogStore) Set(key, val []byte) error {
	return s.db.Set(stableKey(key), val, pebble.Sync)
}

// Get returns a stable value, or an error "not found".
func (s *LogStore) Get(key []byte) ([]byte, error) {
	v, closer, err := s.db.Get(stableKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, errStableNotFound
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

// SetUint64 stores a stable integer with a synced write.
func (s *LogStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns a stable integer, or an error "not found".
func (s *LogStore) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("meta: stable key %q holds %d bytes, not 8", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// encodeLog appends the value of a log entry:
//
//	format(1)=1 | type(1) | uvarint term | varint appended_at (unix ns)
//	| uvarint len(extensions) | extensions | data (the rest)
func encodeLog(b []byte, l *raft.Log) []byte {
	b = append(b, logFormatV1, byte(l.Type))
	b = binary.AppendUvarint(b, l.Term)
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.AppendVarint(b, at)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	return append(b, l.Data...)
}

var errBadLog = errors.New("malformed entry")

func decodeLog(b []byte, l *raft.Log) error {
	if len(b) < 2 || b[0] != logFormatV1 {
		return errBadLog
	}
	l.Type = raft.LogType(b[1])
	b = b[2:]
	term, n := binary.Uvarint(b)
	if n <= 0 {
		return errBadLog
	}
	b = b[n:]
	at, n := binary.Varint(b)
	if n <= 0 {
		return errBadLog
	}
	b = b[n:]
	ext, n := binary.Uvarint(b)
	if n <= 0 || ext > uint64(len(b)-n) {
		return errBadLog
	}
	b = b[n:]
	l.Term = term
	l.AppendedAt = time.Time{}
	if at != 0 {
		l.AppendedAt = time.Unix(0, at)
	}
	l.Extensions = nil
	if ext > 0 {
		l.Extensions = append([]byte(nil), b[:ext]...)
	}
	l.Data = append([]byte(nil), b[ext:]...)
	return nil
}

// pebbleLogger drops Pebble's informational messages and forwards errors.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(string, ...any) {}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf("meta: pebble: "+format, args...))
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("meta: pebble: "+format, args...))
}

package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quiremq/quire/frontends/pubsub"
)

// Delayed publishes:
//
//	'D' at u64 BE unix ns, seq u64 BE → pubsub.Message (JSON), ordered by due time
//	'R' at u64, seq u64               → Position (JSON): its release began; the
//	                                    message is appended at or after it
const (
	prefixDelayed = 'D'
	prefixRelease = 'R'
)

func delayedKey(prefix byte, at int64, seq uint64) []byte {
	k := make([]byte, 0, 17)
	k = append(k, prefix)
	k = binary.BigEndian.AppendUint64(k, uint64(at))
	return binary.BigEndian.AppendUint64(k, seq)
}

// DelayedID names a delayed publish: its first due time (unix ns) and its
// sequence number.
type DelayedID struct {
	At  int64
	Seq uint64
}

// PutDelayed stores m, to be published at id.At, synced: the publisher is
// acknowledged after this returns. A QoS 2 PUBLISH of a stored session
// passes client and its packet identifier pid (0: none): the id is
// recorded as an inbound one (PutInbound, stored: no position) in the same
// batch, so a crash keeps both or neither, and the client's resend is
// stored exactly once.
func (s *Store) PutDelayed(id DelayedID, m *pubsub.Message, client string, pid uint16) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	b.Set(delayedKey(prefixDelayed, id.At, id.Seq), v, nil)
	if pid != 0 {
		if err := setInbound(b, client, pid, Position{}); err != nil {
			return err
		}
	}
	return b.Commit(pebble.Sync)
}

// MarkReleasing records, synced, that the delayed publishes of ids are
// about to be appended, each at or after its position: a restart then
// looks for them in their shards before releasing them again.
func (s *Store) MarkReleasing(ids map[DelayedID]Position) error {
	b := s.db.NewBatch()
	defer b.Close()
	for id, pos := range ids {
		v, err := json.Marshal(pos)
		if err != nil {
			return err
		}
		b.Set(delayedKey(prefixRelease, id.At, id.Seq), v, nil)
	}
	return b.Commit(pebble.Sync)
}

// DeleteDelayed forgets a delayed publish once it has been published. Not
// synced: a crash that loses the delete leaves its release mark, and the
// restart finds the message in its shard.
func (s *Store) DeleteDelayed(id DelayedID) error {
	b := s.db.NewBatch()
	defer b.Close()
	b.Delete(delayedKey(prefixDelayed, id.At, id.Seq), nil)
	b.Delete(delayedKey(prefixRelease, id.At, id.Seq), nil)
	return b.Commit(pebble.NoSync)
}

// Delayed calls fn for every stored delayed publish, earliest first, with
// the position its release began at (nil: not begun).
func (s *Store) Delayed(fn func(id DelayedID, m *pubsub.Message, releasing *Position) error) error {
	marks := map[DelayedID]*Position{}
	err := s.scan([]byte{prefixRelease}, func(k, v []byte) error {
		id, err := delayedID(k)
		if err != nil {
			return err
		}
		var pos Position
		if err := json.Unmarshal(v, &pos); err != nil {
			return fmt.Errorf("%w: delayed release %x: %v", ErrCorrupt, k, err)
		}
		marks[id] = &pos
		return nil
	})
	if err != nil {
		return err
	}
	return s.scan([]byte{prefixDelayed}, func(k, v []byte) error {
		id, err := delayedID(k)
		if err != nil {
			return err
		}
		var m pubsub.Message
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("%w: delayed message %x: %v", ErrCorrupt, k, err)
		}
		return fn(id, &m, marks[id])
	})
}

func delayedID(k []byte) (DelayedID, error) {
	if len(k) != 17 {
		return DelayedID{}, fmt.Errorf("%w: delayed key %x", ErrCorrupt, k)
	}
	return DelayedID{At: int64(binary.BigEndian.Uint64(k[1:9])), Seq: binary.BigEndian.Uint64(k[9:])}, nil
}

package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quiremq/quire/frontends/pubsub"
)

// prefixDelayed keys delayed publishes: D<at u64 BE unix ns><seq u64 BE> →
// pubsub.Message (JSON), ordered by the time they are due.
const prefixDelayed = 'D'

func delayedKey(at int64, seq uint64) []byte {
	k := make([]byte, 0, 17)
	k = append(k, prefixDelayed)
	k = binary.BigEndian.AppendUint64(k, uint64(at))
	return binary.BigEndian.AppendUint64(k, seq)
}

// PutDelayed stores m, to be published at at (unix nanoseconds), synced:
// the publisher is acknowledged after this returns.
func (s *Store) PutDelayed(at int64, seq uint64, m *pubsub.Message) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.db.Set(delayedKey(at, seq), v, pebble.Sync)
}

// DeleteDelayed forgets a delayed publish once it has been published (not
// synced: after a crash it is published again — at least once).
func (s *Store) DeleteDelayed(at int64, seq uint64) error {
	return s.db.Delete(delayedKey(at, seq), pebble.NoSync)
}

// Delayed calls fn for every stored delayed publish, earliest first.
func (s *Store) Delayed(fn func(at int64, seq uint64, m *pubsub.Message) error) error {
	return s.scan([]byte{prefixDelayed}, func(k, v []byte) error {
		if len(k) != 17 {
			return fmt.Errorf("%w: delayed key %x", ErrCorrupt, k)
		}
		var m pubsub.Message
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("%w: delayed message %x: %v", ErrCorrupt, k, err)
		}
		return fn(int64(binary.BigEndian.Uint64(k[1:9])), binary.BigEndian.Uint64(k[9:]), &m)
	})
}

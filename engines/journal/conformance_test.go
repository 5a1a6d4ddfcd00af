package journal

import (
	"fmt"
	"testing"

	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

// The shard conformance suite against three real bookies over gRPC on
// loopback and an in-process meta, E/Qw/Qa 3/2/2, with ledgers of 16
// entries so that reads, trims, OffsetForTime and reopens cross ledger
// boundaries. Each reopen is a new engine with a new ledger client over
// the same meta and bookies (so it takes the logs over). The subtests
// share the meta and bookies; each gets fresh storage through its own
// Options.Prefix.
func TestConformance(t *testing.T) {
	e := newEnv(t, 3)
	n := 0
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			n++
			prefix := fmt.Sprintf("conformance/%d/", n)
			return func() (shard.Engine, error) {
				return e.engine(Options{Quorum: Quorum{3, 2, 2}, RollEntries: 16, Prefix: prefix}), nil
			}
		},
		Durable: true,
	})
}

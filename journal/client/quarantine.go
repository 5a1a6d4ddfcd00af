package client

import (
	"slices"
	"time"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

// Quarantine. A bookie that answers an add with STATUS_FAILED has failed
// its storage (a full disk, a failed fsync): it accepts no write until it
// is restarted, yet it stays live in the directory (its reads still
// work). Without more, every new ledger placed on it and every ensemble
// change that picks it would fail one add, time out, and change ensemble
// again. The client remembers such a bookie for Options.QuarantineTime:
// CreateLedger places ensembles on the others while they suffice, and
// replacements offered to writers, recoveries and re-replication list it
// last. It is not treated as lost (the auditor's business): its entries
// are still read.

// quarantineOnFailure quarantines bookie if err is its STATUS_FAILED
// answer.
func (c *Client) quarantineOnFailure(bookie string, err error) {
	if err == nil || c.opts.QuarantineTime < 0 || bookierpc.StatusOf(err) != journalv1.Status_STATUS_FAILED {
		return
	}
	until := time.Now().Add(c.opts.QuarantineTime)
	c.qmu.Lock()
	prev, was := c.quarantine[bookie]
	c.quarantine[bookie] = until
	c.qmu.Unlock()
	if !was || time.Now().After(prev) {
		c.log.Warn("journal/client: bookie failed its storage; placing ledgers elsewhere", "bookie", bookie, "for", c.opts.QuarantineTime, "err", err)
	}
}

// quarantined reports whether bookie is in quarantine.
func (c *Client) quarantined(bookie string) bool {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	until, ok := c.quarantine[bookie]
	if ok && time.Now().After(until) {
		delete(c.quarantine, bookie)
		return false
	}
	return ok
}

// healthy returns the bookies of live not in quarantine.
func (c *Client) healthy(live []BookieInfo) []BookieInfo {
	return slices.DeleteFunc(slices.Clone(live), func(b BookieInfo) bool { return c.quarantined(b.ID) })
}

// healthyFirst orders ids with the bookies in quarantine last, otherwise
// keeping their order.
func (c *Client) healthyFirst(ids []string) []string {
	var ok, bad []string
	for _, id := range ids {
		if c.quarantined(id) {
			bad = append(bad, id)
		} else {
			ok = append(ok, id)
		}
	}
	return append(ok, bad...)
}

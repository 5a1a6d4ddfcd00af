package client

import (
	"time"

	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta/schema"
)

// ToMetadata converts a ledger record read from meta into the state
// machines' Metadata (field for field; the state strings are identical).
func ToMetadata(r schema.Record[schema.Ledger]) ledger.Metadata {
	l := r.Value
	md := ledger.Metadata{
		ID: l.ID, Ensemble: l.Ensemble, WriteQuorum: l.WriteQuorum, AckQuorum: l.AckQuorum,
		State: ledger.State(l.State), LastEntry: l.LastEntry, Version: r.Version,
		Fragments: make([]ledger.Fragment, len(l.Fragments)),
	}
	for i, f := range l.Fragments {
		md.Fragments[i] = ledger.Fragment{FirstEntry: f.FirstEntry, Bookies: append([]string(nil), f.Bookies...)}
	}
	return md
}

// FromMetadata converts Metadata back into the record stored in meta;
// createdAt is kept from the record it was read from (Metadata has no
// such field). The version is not part of the record.
func FromMetadata(md ledger.Metadata, createdAt time.Time) schema.Ledger {
	l := schema.Ledger{
		ID: md.ID, Ensemble: md.Ensemble, WriteQuorum: md.WriteQuorum, AckQuorum: md.AckQuorum,
		State: schema.LedgerState(md.State), LastEntry: md.LastEntry, CreatedAt: createdAt,
		Fragments: make([]schema.Fragment, len(md.Fragments)),
	}
	for i, f := range md.Fragments {
		l.Fragments[i] = schema.Fragment{FirstEntry: f.FirstEntry, Bookies: append([]string(nil), f.Bookies...)}
	}
	return l
}

// sameMetadata reports whether a and b are equal but for their versions
// (a CAS whose answer was lost but which took effect reads back as the
// value it wrote).
func sameMetadata(a, b ledger.Metadata) bool {
	a.Version, b.Version = 0, 0
	return a.String() == b.String() && a.ID == b.ID && a.Ensemble == b.Ensemble &&
		a.WriteQuorum == b.WriteQuorum && a.AckQuorum == b.AckQuorum && a.LastEntry == b.LastEntry
}

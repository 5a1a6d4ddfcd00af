package node

import (
	"cmp"
	"context"
	"errors"
	"slices"

	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// Ledgers lists the journal ledgers in meta for the admin API, with the
// bookies each names that meta does not list as live; underReplicated
// keeps only the ledgers naming such a bookie.
func (n *Node) Ledgers(ctx context.Context, underReplicated bool) (adminapi.LedgerList, error) {
	out := adminapi.LedgerList{Ledgers: []adminapi.Ledger{}, LiveBookies: []string{}}
	srv := n.meta.server()
	if srv == nil {
		return out, errors.New("meta is not running on this node (starting or stopping); see /readyz")
	}
	ctx, cancel := context.WithTimeout(ctx, clusterReadTimeout)
	defer cancel()
	live, err := client.MetaDirectory{Store: schema.Store{KV: srv}}.Bookies(ctx)
	if err != nil {
		return out, err
	}
	isLive := map[string]bool{}
	for _, b := range live {
		isLive[b.ID] = true
		out.LiveBookies = append(out.LiveBookies, b.ID)
	}
	slices.Sort(out.LiveBookies)
	switch kv, err := srv.Get(ctx, schema.KeyAuditor); {
	case err == nil:
		out.Auditor = string(kv.Value)
	case !errors.Is(err, meta.ErrNotFound):
		return out, err
	}
	recs, _, err := schema.List[schema.Ledger](ctx, srv, schema.PrefixLedgers, false)
	if err != nil {
		return out, err
	}
	for _, r := range recs {
		l := r.Value
		al := adminapi.Ledger{ID: l.ID, State: string(l.State), Ensemble: l.Ensemble, WriteQuorum: l.WriteQuorum,
			AckQuorum: l.AckQuorum, LastEntry: l.LastEntry}
		for _, f := range l.Fragments {
			al.Fragments = append(al.Fragments, adminapi.Fragment{FirstEntry: f.FirstEntry, Bookies: f.Bookies})
			for _, b := range f.Bookies {
				if !isLive[b] && !slices.Contains(al.Missing, b) {
					al.Missing = append(al.Missing, b)
				}
			}
		}
		if underReplicated && len(al.Missing) == 0 {
			continue
		}
		out.Ledgers = append(out.Ledgers, al)
	}
	slices.SortFunc(out.Ledgers, func(a, b adminapi.Ledger) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

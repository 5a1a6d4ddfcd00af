package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/quiremq/quire/meta/schema"
)

// BookieInfo is one bookie a ledger may use.
type BookieInfo struct {
	// ID names the bookie in ledger metadata fragments. In a Quire node it
	// is the node's inner gRPC address (its meta_addrs entry), the id its
	// bookie writes into its cookie.
	ID string
	// Addr is where its journal.v1.Bookie service answers (HOST:PORT).
	// "" means ID.
	Addr string
	// Node is the failure domain the bookie lives on: no ensemble gets two
	// bookies of one node. "" means the bookie is a node of its own.
	Node string
}

func (b BookieInfo) addr() string {
	if b.Addr == "" {
		return b.ID
	}
	return b.Addr
}

func (b BookieInfo) node() string {
	if b.Node == "" {
		return "bookie:" + b.ID
	}
	return b.Node
}

// BookieDirectory lists the bookies that are up now. It is the client's
// only view of cluster membership: ensembles are picked from it and
// failed bookies are replaced from it.
type BookieDirectory interface {
	Bookies(ctx context.Context) ([]BookieInfo, error)
}

// StaticDirectory is a fixed, settable list of bookies (tests, tools such
// as journal-bench run against given addresses).
type StaticDirectory struct {
	mu      sync.Mutex
	bookies []BookieInfo
}

// NewStaticDirectory returns a directory listing bookies.
func NewStaticDirectory(bookies ...BookieInfo) *StaticDirectory {
	return &StaticDirectory{bookies: slices.Clone(bookies)}
}

// Set replaces the list.
func (d *StaticDirectory) Set(bookies ...BookieInfo) {
	d.mu.Lock()
	d.bookies = slices.Clone(bookies)
	d.mu.Unlock()
}

// Bookies returns the list.
func (d *StaticDirectory) Bookies(context.Context) ([]BookieInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.bookies), nil
}

// RoleBookie is the role a node registered in meta runs a bookie under.
const RoleBookie = "bookie"

// MetaDirectory lists the nodes registered in meta that are up (their
// /live key exists) and have the bookie role. A node's bookie id and
// address are its Addr (the inner gRPC address, as internal/node names
// its bookie); its failure domain is the node id.
type MetaDirectory struct {
	Store schema.Store
}

// Bookies lists the live bookie nodes in node id order.
func (d MetaDirectory) Bookies(ctx context.Context) ([]BookieInfo, error) {
	nodes, err := d.Store.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("journal/client: listing bookies: %w", err)
	}
	var out []BookieInfo
	for _, n := range nodes {
		if !n.Up || !slices.Contains(n.Roles, RoleBookie) || n.Addr == "" {
			continue
		}
		out = append(out, BookieInfo{ID: n.Addr, Addr: n.Addr, Node: "node:" + strconv.FormatUint(n.ID, 10)})
	}
	return out, nil
}

var (
	_ BookieDirectory = (*StaticDirectory)(nil)
	_ BookieDirectory = MetaDirectory{}
)

// ErrNotEnoughBookies is returned by CreateLedger when fewer than E live
// bookies on distinct nodes exist.
var ErrNotEnoughBookies = errors.New("journal/client: not enough bookies on distinct nodes")

// pickEnsemble chooses e bookies on distinct nodes from live, starting at
// offset start (callers rotate it to spread ledgers over the bookies).
func pickEnsemble(live []BookieInfo, e int, start int) ([]BookieInfo, error) {
	n := len(live)
	var out []BookieInfo
	nodes := map[string]bool{}
	ids := map[string]bool{}
	for i := range n {
		b := live[(start+i)%n]
		if nodes[b.node()] || ids[b.ID] {
			continue
		}
		nodes[b.node()], ids[b.ID] = true, true
		out = append(out, b)
		if len(out) == e {
			return out, nil
		}
	}
	return nil, fmt.Errorf("%w: need %d, have %d live bookies on %d nodes", ErrNotEnoughBookies, e, n, len(nodes))
}

// replacements returns the bookies that may replace failing in ensemble:
// live bookies on a node that holds no other bookie of the ensemble.
func replacements(live []BookieInfo, ensemble []string, failing string) []string {
	byID := map[string]BookieInfo{}
	for _, b := range live {
		byID[b.ID] = b
	}
	used := map[string]bool{}
	for _, id := range ensemble {
		if id == failing {
			continue
		}
		if b, ok := byID[id]; ok {
			used[b.node()] = true
		} else {
			used[BookieInfo{ID: id}.node()] = true
		}
	}
	var out []string
	for _, b := range live {
		if !used[b.node()] && !slices.Contains(ensemble, b.ID) {
			out = append(out, b.ID)
		}
	}
	return out
}

// Package adminapi is the node's admin HTTP API: the JSON documents it
// exchanges and a client for it. The server is in internal/node; quirectl and
// the tests use the client. This package imports nothing heavy, so the CLI
// stays small.
//
// Endpoints (all JSON; errors are {"error": "..."} with a 4xx/5xx status):
//
//	GET    /healthz                 200 {"status":"ok"} while the process is up
//	GET    /readyz                  200 when every component has started, else 503; Readiness
//	GET    /metrics                 Prometheus text format
//	GET    /api/v1/cluster          Cluster
//	GET    /api/v1/topics           TopicList
//	POST   /api/v1/topics           CreateTopicRequest -> 201 Topic; 400 bad request, 409 exists
//	GET    /api/v1/topics/{name}    Topic; 404 when there is none
//	DELETE /api/v1/topics/{name}    Deleted; 404 when there is none
//	GET    /api/v1/ledgers          LedgerList: every journal ledger in meta;
//	                                ?under_replicated=true: only those naming a bookie that is not live
//
// Topic names may contain '/', and are written as they are in the path
// (/api/v1/topics/sensors/temp); escaping them (sensors%2Ftemp) works too.
// The topic endpoints answer 503 until the broker has started.
package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Health is the body of /healthz.
type Health struct {
	Status string `json:"status"`
}

// Component is the state of one node component.
type Component struct {
	Name  string `json:"name"`
	State string `json:"state"` // pending, starting, running, stopping, stopped, failed
	Error string `json:"error,omitempty"`
}

// Readiness is the body of /readyz.
type Readiness struct {
	Ready      bool        `json:"ready"`
	Components []Component `json:"components"`
	// NotReady names the components that are not running.
	NotReady []string `json:"not_ready,omitempty"`
}

// Node is one node of the cluster, as registered in meta.
type Node struct {
	ID uint64 `json:"id"`
	// Addr is the node's inner gRPC address as the cluster knows it (its
	// meta_addrs entry).
	Addr string `json:"addr"`
	// GRPCAddr and AdminAddr are the addresses the node is listening on.
	GRPCAddr  string `json:"grpc_addr,omitempty"`
	AdminAddr string `json:"admin_addr,omitempty"`
	// Roles are the roles the node runs: meta, bookie, broker.
	Roles []string `json:"roles"`
	// State is "up" while the node's lease in meta is alive, "down" once
	// it expired or was revoked (the node stopped or was cut off longer
	// than [meta] node_lease_ttl).
	State   string `json:"state"`
	Version string `json:"version,omitempty"`
	// Voter is true for a meta voter (listed in meta_addrs).
	Voter bool `json:"voter,omitempty"`
	// StartedAt is when the node last registered.
	StartedAt time.Time `json:"started_at,omitzero"`
}

// Fragment is the ensemble of a ledger from FirstEntry on.
type Fragment struct {
	FirstEntry int64    `json:"first_entry"`
	Bookies    []string `json:"bookies"`
}

// Ledger is one journal ledger as meta records it.
type Ledger struct {
	ID          uint64     `json:"id"`
	State       string     `json:"state"` // OPEN, IN_RECOVERY, CLOSED
	Ensemble    int        `json:"ensemble"`
	WriteQuorum int        `json:"write_quorum"`
	AckQuorum   int        `json:"ack_quorum"`
	LastEntry   int64      `json:"last_entry"` // of a CLOSED ledger; -1: empty
	Fragments   []Fragment `json:"fragments"`
	// Missing names the bookies of Fragments that are not live now: the
	// ledger keeps fewer copies of their entries until they return or
	// the auditor re-replicates it ([storage.journal] rereplicate_after).
	Missing []string `json:"missing,omitempty"`
}

// LedgerList is the body of /api/v1/ledgers.
type LedgerList struct {
	Ledgers []Ledger `json:"ledgers"`
	// LiveBookies are the bookies meta lists as live.
	LiveBookies []string `json:"live_bookies"`
	// Auditor is the id of the node whose auditor runs re-replication
	// (meta's /auditor/journal); "" when none holds it (no node runs the
	// journal engine with rereplicate_after, or the holder just died).
	Auditor string `json:"auditor"`
}

// Cluster is the body of /api/v1/cluster.
type Cluster struct {
	ClusterName string `json:"cluster_name"`
	Nodes       []Node `json:"nodes"`
	// MetaLeader is the id of the meta (Raft) leader; 0 when there is none
	// (no quorum).
	MetaLeader uint64 `json:"meta_leader"`
	// MetaMode is "raft": the cluster's metadata is in the meta service.
	MetaMode string `json:"meta_mode"`
	// Node is the id of the node that answered.
	Node uint64 `json:"node,omitempty"`
	// Stale is true when meta had no leader to read from: Nodes come from
	// the answering node's own (possibly old) copy, and Error says why.
	Stale bool   `json:"stale,omitempty"`
	Error string `json:"error,omitempty"`
}

// Partition is the state of one partition of a topic.
type Partition struct {
	Partition int    `json:"partition"`
	Shard     string `json:"shard"`
	Low       uint64 `json:"low"`
	High      uint64 `json:"high"`
	Sealed    bool   `json:"sealed"`
	Error     string `json:"error,omitempty"`
	// Node is the node hosting the partition's shard when it is not the
	// node answering (0: that node). Shards are local to the node a topic
	// was created through until the journal engine places them; Low and
	// High are then unknown (0).
	Node uint64 `json:"node,omitempty"`
}

// Topic is one topic.
type Topic struct {
	Name       string    `json:"name"`
	Engine     string    `json:"engine"`
	Partitions int       `json:"partitions"`
	CreatedAt  time.Time `json:"created_at"`
	// Node is the node hosting the topic's shards (0: a single node's
	// registry).
	Node   uint64      `json:"node,omitempty"`
	Shards []Partition `json:"shards"`
}

// TopicList is the body of GET /api/v1/topics.
type TopicList struct {
	Topics []Topic `json:"topics"`
}

// CreateTopicRequest is the body of POST /api/v1/topics. Engine "" lets the
// node's storage rules choose; Partitions 0 means 1.
type CreateTopicRequest struct {
	Name       string `json:"name"`
	Engine     string `json:"engine,omitempty"`
	Partitions int    `json:"partitions,omitempty"`
}

// Deleted is the body of a successful DELETE.
type Deleted struct {
	Deleted string `json:"deleted"`
}

// ErrorBody is the body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

// TopicPath returns the path of a topic's resource.
func TopicPath(name string) string {
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return "/api/v1/topics/" + strings.Join(segs, "/")
}

// Client calls a node's admin API.
type Client struct {
	// Base is the server's URL, e.g. "http://127.0.0.1:58080".
	Base string
	// HTTP is the client to use; default http.DefaultClient.
	HTTP *http.Client
}

// NewClient returns a client for the admin API at server, given as
// HOST:PORT or as a URL.
func NewClient(server string) *Client {
	if !strings.Contains(server, "://") {
		server = "http://" + server
	}
	return &Client{Base: strings.TrimRight(server, "/")}
}

// StatusError is a non-2xx answer.
type StatusError struct {
	Code int
	Msg  string // the server's error message
}

func (e *StatusError) Error() string { return e.Msg }

// IsNotFound reports whether err is a 404 answer.
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Do sends a request with an optional JSON body and returns the raw body of a
// 2xx answer. A non-2xx answer is a *StatusError carrying the server's
// message.
func (c *Client) Do(ctx context.Context, method, path string, in any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the quire admin API at %s: %w", c.Base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		if msg == "" {
			msg = resp.Status
		}
		return b, &StatusError{Code: resp.StatusCode, Msg: msg}
	}
	return b, nil
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	b, err := c.Do(ctx, method, path, in)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// Ledgers lists the journal ledgers (only the under-replicated ones with
// underReplicated).
func (c *Client) Ledgers(ctx context.Context, underReplicated bool) (LedgerList, error) {
	var v LedgerList
	return v, c.call(ctx, http.MethodGet, LedgersPath(underReplicated), nil, &v)
}

// LedgersPath is the path of the ledger list.
func LedgersPath(underReplicated bool) string {
	if underReplicated {
		return "/api/v1/ledgers?under_replicated=true"
	}
	return "/api/v1/ledgers"
}

// Cluster returns the cluster's state.
func (c *Client) Cluster(ctx context.Context) (Cluster, error) {
	var v Cluster
	return v, c.call(ctx, http.MethodGet, "/api/v1/cluster", nil, &v)
}

// Readiness returns the node's readiness; a node that is not ready answers
// 503 with the same document, which is returned with a *StatusError.
func (c *Client) Readiness(ctx context.Context) (Readiness, error) {
	var v Readiness
	b, err := c.Do(ctx, http.MethodGet, "/readyz", nil)
	if jerr := json.Unmarshal(b, &v); err == nil && jerr != nil {
		return v, jerr
	}
	return v, err
}

// Topics lists the topics.
func (c *Client) Topics(ctx context.Context) ([]Topic, error) {
	var v TopicList
	return v.Topics, c.call(ctx, http.MethodGet, "/api/v1/topics", nil, &v)
}

// Topic returns one topic.
func (c *Client) Topic(ctx context.Context, name string) (Topic, error) {
	var v Topic
	return v, c.call(ctx, http.MethodGet, TopicPath(name), nil, &v)
}

// CreateTopic creates a topic.
func (c *Client) CreateTopic(ctx context.Context, req CreateTopicRequest) (Topic, error) {
	var v Topic
	return v, c.call(ctx, http.MethodPost, "/api/v1/topics", req, &v)
}

// DeleteTopic deletes a topic and its data.
func (c *Client) DeleteTopic(ctx context.Context, name string) error {
	var v Deleted
	return c.call(ctx, http.MethodDelete, TopicPath(name), nil, &v)
}

package meta

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// Addrs are the inner gRPC addresses of some or all meta nodes.
	Addrs []string
	// DialOptions are added to every connection (default: insecure).
	DialOptions []grpc.DialOption
	// Timeout bounds a call whose context has no deadline. Default 10s.
	Timeout time.Duration
	// BatchWindow is how many batches of Get/Put/Delete requests may await
	// their results on one node's stream; requests made meanwhile queue and
	// leave together. Default 4.
	BatchWindow int
	// MinBackoff and MaxBackoff bound the pause between retries. Defaults
	// 5ms and 250ms.
	MinBackoff, MaxBackoff time.Duration
}

// Client is a KV over gRPC. It sends every request to the node it believes
// is the leader, follows NOT_LEADER hints, and retries on another node when
// one is unreachable. Reads are retried freely; a write is retried only when
// it was not applied (the server said so, or it never left the client), and
// otherwise fails with ErrAmbiguous (read back before retrying a CAS).
//
// Get, Put and Delete travel over one Batch stream per node: the requests
// of concurrent callers leave together in one message and the leader
// commits their writes together, so many goroutines sharing a Client cost
// few messages and few Raft entries. The other calls are unary RPCs.
type Client struct {
	opts ClientOptions

	mu      sync.Mutex
	addrs   []string
	conns   map[string]*grpc.ClientConn
	streams map[string]*batchStream
	cur     int // index into addrs of the node to try first
}

var _ KV = (*Client)(nil)

// NewClient returns a client of the meta nodes at opts.Addrs. Connections
// are made lazily.
func NewClient(opts ClientOptions) (*Client, error) {
	if len(opts.Addrs) == 0 {
		return nil, fmt.Errorf("%w: meta client needs at least one address", ErrInvalid)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.BatchWindow <= 0 {
		opts.BatchWindow = defaultBatchWindow
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Millisecond
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 250 * time.Millisecond
	}
	return &Client{opts: opts, addrs: slices.Clone(opts.Addrs), conns: map[string]*grpc.ClientConn{},
		streams: map[string]*batchStream{}}, nil
}

// Close closes the connections.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, bs := range c.streams {
		bs.close()
	}
	c.streams = map[string]*batchStream{}
	for _, cc := range c.conns {
		errs = append(errs, cc.Close())
	}
	c.conns = map[string]*grpc.ClientConn{}
	return errors.Join(errs...)
}

// stream returns the Batch stream of the node at addr.
func (c *Client) stream(addr string, cc *grpc.ClientConn) *batchStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	bs := c.streams[addr]
	if bs == nil {
		bs = newBatchStream(cc, c.opts.BatchWindow)
		c.streams[addr] = bs
	}
	return bs
}

// pick returns the node to try and its connection.
func (c *Client) pick() (string, *grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	addr := c.addrs[c.cur%len(c.addrs)]
	cc := c.conns[addr]
	if cc == nil {
		opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, c.opts.DialOptions...)
		var err error
		if cc, err = grpc.NewClient(addr, opts...); err != nil {
			return addr, nil, err
		}
		c.conns[addr] = cc
	}
	return addr, cc, nil
}

// connectTimeout bounds waiting for a connection before a request is sent.
const connectTimeout = time.Second

// connected waits until cc is connected: requests are sent only on a live
// connection, so that an unreachable node costs a retry elsewhere instead
// of an ambiguous write.
func connected(ctx context.Context, cc *grpc.ClientConn) error {
	if cc.GetState() == connectivity.Ready {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	for {
		st := cc.GetState()
		switch st {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return fmt.Errorf("connection to %s: %v", cc.Target(), st)
		case connectivity.Idle:
			cc.Connect()
		}
		if !cc.WaitForStateChange(ctx, st) {
			return fmt.Errorf("connection to %s: %v", cc.Target(), ctx.Err())
		}
	}
}

// moveTo makes the client prefer addr (a leader hint), or the next node
// when addr is empty, unless another call has already moved away from
// failed.
func (c *Client) moveTo(failed, addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.addrs[c.cur%len(c.addrs)] != failed {
		return
	}
	if addr == "" {
		c.cur = (c.cur + 1) % len(c.addrs)
		return
	}
	i := slices.Index(c.addrs, addr)
	if i < 0 {
		c.addrs = append(c.addrs, addr)
		i = len(c.addrs) - 1
	}
	c.cur = i
}

// isConnErr reports whether err is a gRPC failure that did not come from
// meta's service code (the node is down or unreachable).
func isConnErr(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	return st.Code() == codes.Unavailable || st.Code() == codes.Unknown || st.Code() == codes.Internal && len(st.Details()) == 0
}

// do runs a unary call until it succeeds, fails for good, or ctx ends.
func (c *Client) do(ctx context.Context, write bool, call func(context.Context, metav1.MetaClient) error) error {
	return c.retry(ctx, write, func(ctx context.Context, deadline time.Time, _ string, cc *grpc.ClientConn) error {
		if !deadline.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		return call(forwardCtx(ctx), metav1.NewMetaClient(cc))
	})
}

// doOp runs one op over the node's Batch stream, retrying like do.
func (c *Client) doOp(ctx context.Context, op *metav1.BatchOp) (*metav1.BatchResult, error) {
	var res *metav1.BatchResult
	err := c.retry(ctx, isWrite(op), func(ctx context.Context, deadline time.Time, addr string, cc *grpc.ClientConn) error {
		rs, serr := c.stream(addr, cc).call(ctx, []*metav1.BatchOp{op}, deadline)
		if serr != nil {
			return serr
		}
		if e := rs[0].GetError(); e != nil {
			return opErrorStatus(e)
		}
		if rs[0].GetResult() == nil {
			return fmt.Errorf("%w: empty result from %s", ErrInvalid, addr)
		}
		res = rs[0]
		return nil
	})
	return res, err
}

// retry runs call until it succeeds, fails for good, or ctx ends. When ctx
// has no deadline, ClientOptions.Timeout bounds the whole: call gets that
// deadline (a batched op checks it without a timer of its own; see
// batchStream.call).
func (c *Client) retry(ctx context.Context, write bool, call func(ctx context.Context, deadline time.Time, addr string, cc *grpc.ClientConn) error) error {
	var deadline time.Time
	if _, ok := ctx.Deadline(); !ok {
		deadline = time.Now().Add(c.opts.Timeout)
	}
	expired := func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return context.DeadlineExceeded
		}
		return nil
	}
	backoff := c.opts.MinBackoff
	for {
		addr, cc, err := c.pick()
		if err == nil {
			err = connected(ctx, cc)
			if err != nil {
				c.moveTo(addr, "")
			}
		}
		if err == nil {
			raw := call(ctx, deadline, addr, cc)
			if raw == nil {
				return nil
			}
			err = fromStatus(raw)
			var nl *NotLeaderError
			var se *streamError
			switch {
			case errors.As(raw, &se):
				if e := expired(); e != nil {
					return fmt.Errorf("%w (%v)", e, se)
				}
				c.moveTo(addr, "")
				if se.sent && write {
					return se.classify(write)
				}
			case errors.As(err, &nl):
				c.moveTo(addr, nl.LeaderAddr)
			case errors.Is(err, ErrStopped):
				c.moveTo(addr, "")
			case err == raw && isConnErr(raw):
				c.moveTo(addr, "")
				if write {
					return fmt.Errorf("%w: %s: %v", ErrAmbiguous, addr, raw)
				}
			case errors.Is(err, ErrAmbiguous) && write:
				c.moveTo(addr, "")
				return err
			default:
				return err
			}
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if !deadline.IsZero() {
			wait = max(min(wait, time.Until(deadline)), 0)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		if e := expired(); e != nil {
			return fmt.Errorf("%w (last error: %v)", e, err)
		}
		backoff = min(backoff*2, c.opts.MaxBackoff)
	}
}

// Get implements KV.
func (c *Client) Get(ctx context.Context, key string, opts ...ReadOption) (KeyValue, error) {
	o := readOptions(opts)
	r, err := c.doOp(ctx, &metav1.BatchOp{Op: &metav1.BatchOp_Get{Get: &metav1.GetRequest{Key: key, Stale: o.stale}}})
	if err != nil {
		return KeyValue{}, err
	}
	if !r.GetGet().GetFound() {
		return KeyValue{}, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return ownedKV(r.GetGet().Kv), nil
}

// List implements KV.
func (c *Client) List(ctx context.Context, prefix string, o ListOptions) (ListResult, error) {
	var resp *metav1.ListResponse
	err := c.do(ctx, false, func(ctx context.Context, mc metav1.MetaClient) (err error) {
		resp, err = mc.List(ctx, &metav1.ListRequest{Prefix: prefix, StartAfter: o.StartAfter, Limit: uint32(max(o.Limit, 0)), Stale: o.Stale})
		return err
	})
	if err != nil {
		return ListResult{}, err
	}
	return listFromProto(resp), nil
}

// Put implements KV.
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...WriteOption) (KeyValue, error) {
	o := writeOptions(opts)
	req := &metav1.PutRequest{Key: key, Value: value, Lease: uint64(o.lease), CheckVersion: o.check, ExpectVersion: o.version}
	r, err := c.doOp(ctx, &metav1.BatchOp{Op: &metav1.BatchOp_Put{Put: req}})
	if err != nil {
		return KeyValue{}, err
	}
	return ownedKV(r.GetPut().GetKv()), nil
}

// Delete implements KV.
func (c *Client) Delete(ctx context.Context, key string, opts ...WriteOption) (uint64, error) {
	o := writeOptions(opts)
	req := &metav1.DeleteRequest{Key: key, CheckVersion: o.check, ExpectVersion: o.version}
	r, err := c.doOp(ctx, &metav1.BatchOp{Op: &metav1.BatchOp_Delete{Delete: req}})
	if err != nil {
		return 0, err
	}
	return r.GetDelete().GetRevision(), nil
}

// Grant implements KV.
func (c *Client) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	var resp *metav1.LeaseGrantResponse
	err := c.do(ctx, true, func(ctx context.Context, mc metav1.MetaClient) (err error) {
		resp, err = mc.LeaseGrant(ctx, &metav1.LeaseGrantRequest{TtlMs: ttl.Milliseconds()})
		return err
	})
	if err != nil {
		return 0, err
	}
	return LeaseID(resp.Id), nil
}

// KeepAlive implements KV. Retried freely: it only moves a deadline.
func (c *Client) KeepAlive(ctx context.Context, id LeaseID) (time.Duration, error) {
	var resp *metav1.LeaseKeepAliveResponse
	err := c.do(ctx, false, func(ctx context.Context, mc metav1.MetaClient) (err error) {
		resp, err = mc.LeaseKeepAlive(ctx, &metav1.LeaseKeepAliveRequest{Id: uint64(id)})
		return err
	})
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.TtlMs) * time.Millisecond, nil
}

// Revoke implements KV.
func (c *Client) Revoke(ctx context.Context, id LeaseID) error {
	return c.do(ctx, true, func(ctx context.Context, mc metav1.MetaClient) error {
		_, err := mc.LeaseRevoke(ctx, &metav1.LeaseRevokeRequest{Id: uint64(id)})
		return err
	})
}

// Status returns the status of the node the client currently prefers.
func (c *Client) Status(ctx context.Context) (*metav1.StatusResponse, error) {
	var resp *metav1.StatusResponse
	err := c.do(ctx, false, func(ctx context.Context, mc metav1.MetaClient) (err error) {
		resp, err = mc.Status(ctx, &metav1.StatusRequest{})
		return err
	})
	return resp, err
}

// Watch implements KV. When a node fails the watch resumes on another one
// from the next undelivered revision, so the caller still sees every change
// once, in order.
func (c *Client) Watch(ctx context.Context, prefix string, from uint64) <-chan WatchResponse {
	ch := make(chan WatchResponse, 16)
	go func() {
		defer close(ch)
		next := from
		backoff := c.opts.MinBackoff
		deliver := func(r WatchResponse) bool {
			select {
			case ch <- r:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			addr, cc, err := c.pick()
			if err == nil {
				var st grpc.ServerStreamingClient[metav1.WatchResponse]
				st, err = metav1.NewMetaClient(cc).Watch(forwardCtx(ctx), &metav1.WatchRequest{Prefix: prefix, StartRevision: next})
				for err == nil {
					var resp *metav1.WatchResponse
					if resp, err = st.Recv(); err != nil {
						break
					}
					backoff = c.opts.MinBackoff
					r := WatchResponse{Revision: resp.Revision, Events: make([]Event, len(resp.Events))}
					for i, e := range resp.Events {
						r.Events[i] = eventFromProto(e)
					}
					if !deliver(r) {
						return
					}
					next = resp.Revision + 1
				}
				if ctx.Err() != nil {
					deliver(WatchResponse{Err: ctx.Err()})
					return
				}
				e := fromStatus(err)
				if errors.Is(e, ErrCompacted) || errors.Is(e, ErrInvalid) {
					deliver(WatchResponse{Err: e})
					return
				}
				c.moveTo(addr, "")
				if errors.Is(err, io.EOF) {
					err = nil
				}
			}
			select {
			case <-ctx.Done():
				deliver(WatchResponse{Err: ctx.Err()})
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, c.opts.MaxBackoff)
		}
	}()
	return ch
}

// KeepLeaseAlive renews lease id on kv every interval until ctx ends
// (returning nil) or the lease is gone (returning ErrLeaseNotFound: the
// owner must grant a new lease and write its keys again). Transient errors
// are retried until the lease's TTL would have run out.
func KeepLeaseAlive(ctx context.Context, kv KV, id LeaseID, ttl, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, interval)
		_, err := kv.KeepAlive(cctx, id)
		cancel()
		switch {
		case err == nil:
			last = time.Now()
		case errors.Is(err, ErrLeaseNotFound):
			return err
		case ctx.Err() != nil:
			return nil
		case time.Since(last) > ttl:
			return fmt.Errorf("%w: no keep-alive succeeded for %v (last error: %v)", ErrLeaseNotFound, ttl, err)
		}
	}
}

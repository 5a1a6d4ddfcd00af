package load

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quiremq/quire/benchmarks/mqtt/client"
	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/internal/hist"
)

// publisher is one publishing client and what became of its messages.
type publisher struct {
	id     uint32
	topic  string
	c      *client.Client
	window uint64 // messages it may be ahead of its subscribers
	fan    uint64 // subscribers that get each of its messages

	sent      atomic.Uint64 // messages published; their seqs are 0..sent-1
	acked     atomic.Uint64 // PUBACKs received
	delivered atomic.Uint64 // deliveries to all its subscribers
	waiting   atomic.Bool   // set while it waits for its window
	wake      chan struct{}
}

// outstanding is the number of deliveries still due.
func (p *publisher) outstanding() uint64 {
	d := p.delivered.Load() // first: it never passes a later sent×fan
	return p.sent.Load()*p.fan - d
}

// subscriber is one subscribing client; every field but unique is touched
// only by its client's read goroutine until the client is closed.
type subscriber struct {
	c       *client.Client
	seen    [][]uint64 // by publisher: bitset of seqs received
	unique  atomic.Uint64
	dups    uint64
	foreign uint64 // payloads from no publisher of this run
	inWin   uint64 // deliveries received inside the measured window
	hist    hist.Histogram
}

// run is the state of one Run.
type run struct {
	cfg   Config
	epoch time.Time // payload timestamps are nanoseconds since epoch
	// The measured window, in nanoseconds since epoch.
	winStart, winEnd atomic.Int64
	pubs             []*publisher
	subs             []*subscriber
}

func (r *run) now() int64 { return int64(time.Since(r.epoch)) }

// Run connects the scenario's clients, runs the traffic for Warmup plus
// Duration, drains, closes every client and reports what was delivered.
// An error means the run could not be carried out (a refused connection,
// a connection lost mid-run); lost or duplicated messages are not an error
// but a Result that is not OK.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Scenario == Idle {
		return runIdle(ctx, cfg)
	}
	r := &run{cfg: cfg, epoch: time.Now()}
	r.winStart.Store(1<<63 - 1)
	r.winEnd.Store(1<<63 - 1)
	defer r.closeAll()
	if err := r.connect(ctx); err != nil {
		return nil, err
	}
	if cfg.OnReady != nil {
		cfg.OnReady()
	}
	return r.traffic(ctx)
}

// topology returns the publishers' topics, each subscriber's filter and
// which publishers each subscriber hears.
func (r *run) topology() (pubTopics, subFilters []string, fan uint64) {
	c, p := r.cfg.Clients, r.cfg.Prefix
	switch r.cfg.Scenario {
	case PointToPoint:
		for i := range c {
			t := fmt.Sprintf("%s/p2p/%d", p, i)
			pubTopics = append(pubTopics, t)
			subFilters = append(subFilters, t)
		}
		return pubTopics, subFilters, 1
	case FanIn:
		for i := range c {
			pubTopics = append(pubTopics, fmt.Sprintf("%s/fanin/%d", p, i))
		}
		return pubTopics, []string{p + "/fanin/+"}, 1
	default: // FanOut
		for range c {
			subFilters = append(subFilters, p+"/fanout")
		}
		return []string{p + "/fanout"}, subFilters, uint64(c)
	}
}

func (r *run) dial(ctx context.Context, id string, opts client.Options) (*client.Client, error) {
	opts.Addr, opts.ClientID, opts.Version, opts.KeepAlive = r.cfg.Addr, id, r.cfg.Version, 60
	return client.Dial(ctx, opts)
}

// connect dials and subscribes every subscriber, then dials the publishers.
func (r *run) connect(ctx context.Context) error {
	pubTopics, subFilters, fan := r.topology()
	window := uint64(r.cfg.Window)
	if r.cfg.Scenario == FanIn {
		window = max(1, window/uint64(len(pubTopics)))
	}
	r.pubs = make([]*publisher, len(pubTopics))
	for i, t := range pubTopics {
		r.pubs[i] = &publisher{id: uint32(i), topic: t, window: window, fan: fan, wake: make(chan struct{}, 1)}
	}
	r.subs = make([]*subscriber, len(subFilters))
	for i := range r.subs {
		r.subs[i] = &subscriber{seen: make([][]uint64, len(r.pubs))}
	}
	err := parallel(ctx, len(r.subs), func(ctx context.Context, i int) error {
		s := r.subs[i]
		c, err := r.dial(ctx, fmt.Sprintf("%s-sub-%d", r.cfg.Prefix, i), client.Options{
			OnPublish: func(p *packet.Publish) { r.receive(s, p) }})
		if err != nil {
			return err
		}
		s.c = c
		return c.Subscribe(ctx, subFilters[i], r.cfg.QoS)
	})
	if err != nil {
		return err
	}
	return parallel(ctx, len(r.pubs), func(ctx context.Context, i int) error {
		p := r.pubs[i]
		c, err := r.dial(ctx, fmt.Sprintf("%s-pub-%d", r.cfg.Prefix, i), client.Options{
			MaxInflight: int(p.window) + 1,
			OnPuback: func(_ uint16, code packet.ReasonCode) {
				if !code.IsError() {
					p.acked.Add(1)
				}
			}})
		p.c = c
		return err
	})
}

// dialers bounds the connections being set up at once.
const dialers = 64

// parallel runs f(0..n-1), at most dialers at a time, and returns the first
// error; the first error cancels the context of the others.
func parallel(ctx context.Context, n int, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, dialers)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(ctx, i); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// receive handles one delivery on subscriber s's read goroutine.
func (r *run) receive(s *subscriber, m *packet.Publish) {
	now := r.now()
	if len(m.Payload) < HeaderSize {
		s.foreign++
		return
	}
	sentAt := int64(binary.BigEndian.Uint64(m.Payload[0:8]))
	pid := binary.BigEndian.Uint32(m.Payload[8:12])
	seq := binary.BigEndian.Uint64(m.Payload[12:20])
	if int(pid) >= len(r.pubs) || seq >= r.pubs[pid].sent.Load() {
		s.foreign++
		return
	}
	bits := s.seen[pid]
	w := int(seq / 64)
	if w >= len(bits) {
		grown := make([]uint64, max(w+1, 2*len(bits)))
		copy(grown, bits)
		bits = grown
		s.seen[pid] = bits
	}
	if bits[w]&(1<<(seq%64)) != 0 {
		s.dups++
		return
	}
	bits[w] |= 1 << (seq % 64)
	s.unique.Add(1)
	if now >= r.winStart.Load() && now < r.winEnd.Load() {
		s.inWin++
		s.hist.Record(time.Duration(now - sentAt))
	}
	p := r.pubs[pid]
	p.delivered.Add(1)
	if p.waiting.Load() && p.outstanding() <= p.window*p.fan/2 && p.waiting.CompareAndSwap(true, false) {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// publish is publisher p's loop until stopAt.
func (r *run) publish(ctx context.Context, p *publisher, stopAt int64) error {
	buf := make([]byte, r.cfg.Size)
	binary.BigEndian.PutUint32(buf[8:12], p.id)
	limit := p.window * p.fan
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Open loop (Config.Rate): message seq is due at t0 + seq*interval.
	var interval float64
	t0 := r.now()
	if r.cfg.Rate > 0 {
		interval = float64(time.Second) * float64(len(r.pubs)) / r.cfg.Rate
	}
	for seq := uint64(0); ; seq++ {
		now := r.now()
		if now >= stopAt || (r.cfg.Messages > 0 && seq >= uint64(r.cfg.Messages)) {
			break
		}
		sendTime := now
		if interval > 0 {
			sendTime = t0 + int64(float64(seq)*interval)
			if sendTime > now {
				// Early: write out what is buffered and wait for the due time.
				if err := p.c.Flush(); err != nil {
					return err
				}
				if err := sleepCtx(ctx, p, timer, time.Duration(sendTime-now)); err != nil {
					return err
				}
				seq--
				continue
			}
		}
		if p.outstanding() >= limit {
			if err := p.c.Flush(); err != nil {
				return err
			}
			p.waiting.Store(true)
			if p.outstanding() >= limit {
				timer.Reset(20 * time.Millisecond)
				select {
				case <-p.wake:
				case <-timer.C:
				case <-p.c.Done():
					return fmt.Errorf("publisher %d: %w", p.id, p.c.Err())
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			p.waiting.Store(false)
			seq--
			continue
		}
		binary.BigEndian.PutUint64(buf[0:8], uint64(sendTime))
		binary.BigEndian.PutUint64(buf[12:20], seq)
		// Count it as sent first: a delivery can beat Publish's return.
		p.sent.Store(seq + 1)
		if err := p.c.Publish(ctx, p.topic, r.cfg.QoS, buf); err != nil {
			return fmt.Errorf("publisher %d: %w", p.id, err)
		}
	}
	return p.c.Flush()
}

// sleepCtx waits d on timer, or less if p's connection or ctx ends.
func sleepCtx(ctx context.Context, p *publisher, timer *time.Timer, d time.Duration) error {
	timer.Reset(d)
	select {
	case <-timer.C:
		return nil
	case <-p.c.Done():
		return fmt.Errorf("publisher %d: %w", p.id, p.c.Err())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// traffic runs the publishers, drains and gathers the result.
func (r *run) traffic(ctx context.Context) (*Result, error) {
	start := r.now()
	r.winStart.Store(start + int64(r.cfg.Warmup))
	stopAt := start + int64(r.cfg.Warmup+r.cfg.Duration)
	r.winEnd.Store(stopAt)
	// A connection lost mid-run, or a failed publish, ends the run.
	runCtx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	watching, unwatch := context.WithCancel(context.Background())
	defer unwatch()
	for i, s := range r.subs {
		go func() {
			select {
			case <-s.c.Done():
				fail(fmt.Errorf("subscriber %d: %w", i, s.c.Err()))
			case <-watching.Done():
			}
		}()
	}
	var wg sync.WaitGroup
	for _, p := range r.pubs {
		wg.Go(func() {
			if err := r.publish(runCtx, p, stopAt); err != nil {
				fail(err)
			}
		})
	}
	wg.Wait()
	r.drain(runCtx)
	// Messages may have ended the traffic before stopAt.
	measured := min(r.now(), stopAt) - r.winStart.Load()
	err := context.Cause(runCtx)
	unwatch()
	r.closeAll()
	if err != nil {
		return nil, err
	}
	return r.result(time.Duration(max(measured, 0))), nil
}

// drain waits, after the publishers stopped, until every message is delivered and
// acknowledged, or Drain has passed.
func (r *run) drain(ctx context.Context) {
	deadline := time.Now().Add(r.cfg.Drain)
	for time.Now().Before(deadline) {
		done := true
		for _, p := range r.pubs {
			if p.outstanding() != 0 || (r.cfg.QoS > 0 && p.acked.Load() != p.sent.Load()) {
				done = false
				break
			}
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (r *run) closeAll() {
	var wg sync.WaitGroup
	for _, p := range r.pubs {
		if p != nil && p.c != nil {
			wg.Go(func() { p.c.Close() })
		}
	}
	for _, s := range r.subs {
		if s != nil && s.c != nil {
			wg.Go(func() { s.c.Close() })
		}
	}
	wg.Wait()
}

// result adds up the run, measured the length of the measured window;
// every client is closed, so the subscribers'
// fields are final.
func (r *run) result(measured time.Duration) *Result {
	res := &Result{Scenario: r.cfg.Scenario, QoS: int(r.cfg.QoS), Size: r.cfg.Size, Clients: r.cfg.Clients,
		Publishers: len(r.pubs), Subscribers: len(r.subs), Window: r.cfg.Window, Rate: r.cfg.Rate,
		Warmup: r.cfg.Warmup.Seconds(), Duration: measured.Seconds()}
	var h hist.Histogram
	var inWin uint64
	for _, p := range r.pubs {
		res.Sent += p.sent.Load()
		res.Expected += p.sent.Load() * p.fan
		if r.cfg.QoS > 0 {
			res.Unacked += p.sent.Load() - p.acked.Load()
		}
	}
	for _, s := range r.subs {
		res.Received += s.unique.Load()
		res.Duplicates += s.dups
		res.Foreign += s.foreign
		inWin += s.inWin
		h.Merge(&s.hist)
	}
	res.Lost = res.Expected - min(res.Received, res.Expected)
	if measured > 0 {
		res.MsgsPerSec = float64(inWin) / measured.Seconds()
	}
	res.P50 = micros(h.Quantile(0.50))
	res.P99 = micros(h.Quantile(0.99))
	res.Max = micros(h.Max())
	res.OK = res.Lost == 0 && res.Duplicates == 0 && res.Foreign == 0 && res.Unacked == 0 && inWin > 0
	return res
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

package client

import (
	"context"
	"sync"
	"time"

	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

// link pipelines one ledger handle's adds to one bookie over one
// AddEntries stream. Its goroutine sends what the event loop queued, so
// the loop never blocks on the network (bookierpc's Add blocks under flow
// control); answers queue in the link, in the bookie's completion order,
// and ready tells the owner when the queue goes from empty to not empty
// (one wake-up for a burst of answers, not one per answer); the owner
// drains it with take. If the stream cannot be opened or ends, every add
// it could not deliver is answered with the error (the machine treats it
// as unknown).
type link struct {
	c      *Client
	bookie string
	ready  func(*link)
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	rmu     sync.Mutex
	results []linkResult

	mu      sync.Mutex
	queue   []bookierpc.Add
	closing bool
	notify  chan struct{}

	// Loop-owned bookkeeping for add timeouts.
	outstanding int
	since       time.Time // last progress while outstanding > 0
}

// linkResult is one add's answer: err nil once the bookie synced it.
type linkResult struct {
	entry int64
	err   error
}

func newLink(c *Client, bookie string, ready func(*link)) *link {
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{c: c, bookie: bookie, ready: ready, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), notify: make(chan struct{}, 1)}
	go l.run()
	return l
}

// answer queues an add's answer and wakes the owner if it was idle.
func (l *link) answer(entry int64, err error) {
	l.rmu.Lock()
	wake := len(l.results) == 0
	l.results = append(l.results, linkResult{entry, err})
	l.rmu.Unlock()
	if wake {
		l.ready(l)
	}
}

// take moves the queued answers into buf (reused) and returns it.
func (l *link) take(buf []linkResult) []linkResult { return takeAll(&l.rmu, &l.results, buf) }

func (l *link) send(a bookierpc.Add, now time.Time) {
	if l.outstanding == 0 {
		l.since = now
	}
	l.outstanding++
	l.mu.Lock()
	wake := len(l.queue) == 0
	l.queue = append(l.queue, a)
	l.mu.Unlock()
	if wake { // see signal
		signal(l.notify)
	}
}

// answered records an answer in the loop's bookkeeping.
func (l *link) answered(now time.Time) {
	if l.outstanding > 0 {
		l.outstanding--
	}
	l.since = now
}

// stuck reports whether an add has waited longer than d for an answer.
func (l *link) stuck(now time.Time, d time.Duration) bool {
	return l.outstanding > 0 && now.Sub(l.since) > d
}

// close sends what is queued, waits for every answer and ends the stream.
func (l *link) close() {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	signal(l.notify)
	<-l.done
}

// abort ends the stream at once: adds not yet answered are reported
// failed.
func (l *link) abort() { l.cancel() }

func (l *link) run() {
	defer close(l.done)
	var s *bookierpc.AddStream
	defer func() {
		if s != nil {
			s.Close()
		}
	}()
	var batch []bookierpc.Add
	for {
		select {
		case <-l.notify:
		case <-l.ctx.Done():
		}
		l.mu.Lock()
		batch = append(batch[:0], l.queue...)
		clear(l.queue)
		l.queue = l.queue[:0]
		closing := l.closing
		l.mu.Unlock()
		if l.ctx.Err() != nil {
			for _, a := range batch {
				l.answer(int64(a.Entry), l.ctx.Err())
			}
			return
		}
		for rest := batch; len(rest) > 0; {
			if s == nil {
				var err error
				if s, err = l.open(); err != nil {
					for _, a := range rest {
						l.answer(int64(a.Entry), err)
					}
					break
				}
			}
			n := chunk(rest)
			if err := s.AddBatch(rest[:n]); err != nil {
				for _, a := range rest[:n] {
					l.answer(int64(a.Entry), err)
				}
				s.Abort()
				s = nil
			}
			rest = rest[n:]
		}
		clear(batch)
		if closing {
			return
		}
	}
}

// maxBatchAdds bounds the adds of one AddEntries message.
const maxBatchAdds = 512

// chunk returns how many of adds (at least one) go in the next message:
// up to maxBatchAdds, within bookierpc.MaxBatchBytes.
func chunk(adds []bookierpc.Add) int {
	n, bytes := 0, 0
	for n < len(adds) && n < maxBatchAdds {
		bytes += len(adds[n].Payload) + bookierpc.BatchAddOverhead
		if n > 0 && bytes > bookierpc.MaxBatchBytes {
			break
		}
		n++
	}
	return n
}

func (l *link) open() (*bookierpc.AddStream, error) {
	cc, err := l.c.bookie(l.bookie)
	if err != nil {
		return nil, err
	}
	return cc.AddStream(l.ctx, func(r bookierpc.AddResult) { l.answer(int64(r.Entry), r.Err) })
}

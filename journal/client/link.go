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
// control); answers come back through report, in the bookie's completion
// order. If the stream cannot be opened or ends, every add it could not
// deliver is reported with the error (the machine treats it as unknown).
type link struct {
	c      *Client
	bookie string
	report func(bookie string, entry int64, err error)
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	queue   []bookierpc.Add
	closing bool
	notify  chan struct{}

	// Loop-owned bookkeeping for add timeouts.
	outstanding int
	since       time.Time // last progress while outstanding > 0
}

func newLink(c *Client, bookie string, report func(string, int64, error)) *link {
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{c: c, bookie: bookie, report: report, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), notify: make(chan struct{}, 1)}
	go l.run()
	return l
}

func (l *link) send(a bookierpc.Add, now time.Time) {
	if l.outstanding == 0 {
		l.since = now
	}
	l.outstanding++
	l.mu.Lock()
	l.queue = append(l.queue, a)
	l.mu.Unlock()
	l.signal()
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

func (l *link) signal() {
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

// close sends what is queued, waits for every answer and ends the stream.
func (l *link) close() {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.signal()
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
				l.report(l.bookie, int64(a.Entry), l.ctx.Err())
			}
			return
		}
		for rest := batch; len(rest) > 0; {
			if s == nil {
				var err error
				if s, err = l.open(); err != nil {
					for _, a := range rest {
						l.report(l.bookie, int64(a.Entry), err)
					}
					break
				}
			}
			n := chunk(rest)
			if err := s.AddBatch(rest[:n]); err != nil {
				for _, a := range rest[:n] {
					l.report(l.bookie, int64(a.Entry), err)
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
	return cc.AddStream(l.ctx, func(r bookierpc.AddResult) { l.report(l.bookie, int64(r.Entry), r.Err) })
}

package client

import (
	"context"
	"errors"
	"sync"
	"time"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

// link pipelines one ledger handle's adds to one bookie over one
// AddEntries stream. Its goroutine sends what the event loop queued, so
// the loop never blocks on the network (bookierpc's Add blocks under flow
// control); answers queue in the link, in the bookie's completion order,
// and ready tells the owner when the queue goes from empty to not empty
// (one wake-up for a burst of answers, not one per answer); the owner
// drains it with take.
//
// A broken stream is not a failed bookie: when the stream cannot be opened
// or ends (the bookie restarted, a connection dropped), the link redials
// with backoff and resends on the new stream every add the old one left
// unanswered, as BookKeeper's per-bookie channel does; those adds get no
// answer meanwhile, so the owner's add timeout (stuck) is what declares
// the bookie failed. Resending to the same bookie is what the protocol
// allows (checked against DESIGN.md's Journal section): a bookie's add is
// idempotent for the same ledger, entry and payload (it journals it again
// and rewrites the entry's index record, as replay does: journal/bookie
// doc), and this writer resends the very bytes it sent, so no offset gets
// two values; a bookie that comes back at the same id kept its data ("a
// cookie per disk so a wiped bookie cannot silently rejoin"), and it acks
// only after its journal is fsynced, so its acks count like any other and
// an entry is still acknowledged only on Qa real acks; a fenced ledger
// refuses the resent add (FENCED), which stops the writer. A bookie's own
// refusal (a *StatusError: fenced, failed, too large...) is answered to
// the owner at once, except STATUS_CLOSED (the bookie is shutting down),
// which is treated like a broken stream.
type link struct {
	c      *Client
	bookie string
	ready  func(*link)
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	rmu     sync.Mutex
	results []linkResult

	mu       sync.Mutex
	queue    []bookierpc.Add
	sent     map[uint64]bookierpc.Add // handed to the current stream, not answered yet
	broken   bool                     // an add came back unanswered: redial
	progress bool                     // an add was acknowledged since the last redial
	stopped  bool                     // run returned: broken adds are answered, not resent
	closing  bool
	notify   chan struct{}

	// Loop-owned bookkeeping for add timeouts.
	outstanding int
	since       time.Time // last progress while outstanding > 0
	waiting     bool      // stuck with no replacement: logged once
}

// linkResult is one add's answer: err nil once the bookie synced it.
type linkResult struct {
	entry int64
	err   error
}

func newLink(c *Client, bookie string, ready func(*link)) *link {
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{c: c, bookie: bookie, ready: ready, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), notify: make(chan struct{}, 1), sent: map[uint64]bookierpc.Add{}}
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
	l.waiting = false
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

// transient reports whether err is no answer from a bookie that may come
// back (a transport error, or the bookie shutting down), rather than its
// refusal.
func transient(err error) bool {
	switch bookierpc.StatusOf(err) {
	case journalv1.Status_STATUS_UNSPECIFIED, journalv1.Status_STATUS_CLOSED:
		return true
	}
	return false
}

// result is the stream's answer to an add: a transient failure puts the
// add back in the queue for the next stream (unless the link is ending);
// anything else goes to the owner.
func (l *link) result(r bookierpc.AddResult) {
	l.mu.Lock()
	a, ok := l.sent[r.Entry]
	delete(l.sent, r.Entry)
	if ok && r.Err != nil && transient(r.Err) && !l.stopped && l.ctx.Err() == nil {
		l.queue = append(l.queue, a)
		l.broken = true
		l.mu.Unlock()
		signal(l.notify)
		return
	}
	if r.Err == nil {
		l.progress = true
	}
	l.mu.Unlock()
	l.answer(int64(r.Entry), r.Err)
}

// Redial backoff of a link whose stream broke: from minRedial, doubling up
// to maxRedial, back to minRedial once an add is acknowledged. (The gRPC
// connection has its own reconnect backoff, bookieConnectParams.)
const (
	minRedial = 20 * time.Millisecond
	maxRedial = 500 * time.Millisecond
)

func (l *link) run() {
	var s *bookierpc.AddStream
	defer func() {
		if s != nil {
			s.Close()
		}
		// Whatever is still queued (the link was cut, or closed while
		// its bookie was unreachable) fails.
		l.mu.Lock()
		l.stopped = true
		left := l.queue
		l.queue = nil
		l.mu.Unlock()
		err := l.ctx.Err()
		if err == nil {
			err = bookierpc.ErrStreamClosed
		}
		for _, a := range left {
			l.answer(int64(a.Entry), err)
		}
		close(l.done)
	}()
	var (
		batch []bookierpc.Add
		wait  <-chan time.Time // backing off before the next dial
		delay time.Duration
		down  bool // the stream broke and no add went out on a new one yet
	)
	for {
		select {
		case <-l.notify:
		case <-wait:
			wait = nil
		case <-l.ctx.Done():
		}
		if l.ctx.Err() != nil {
			return
		}
		l.mu.Lock()
		closing := l.closing
		if wait != nil && !closing {
			l.mu.Unlock()
			continue // more to send, but still backing off
		}
		broken := l.broken
		l.broken = false
		if l.progress {
			l.progress, delay = false, 0
		}
		batch = append(batch[:0], l.queue...)
		clear(l.queue)
		l.queue = l.queue[:0]
		l.mu.Unlock()
		if s != nil && (broken || ended(s)) {
			if !down && !l.c.isClosed() { // a closing Client cuts its streams: no news
				l.c.log.Info("journal/client: bookie add stream broke, reconnecting", "bookie", l.bookie, "err", s.Err())
				down = true
			}
			s.Abort() // every add it held was answered or queued again
			s = nil
		}
		failed := false
		for rest := batch; len(rest) > 0; {
			if s == nil {
				var err error
				if s, err = l.open(); err != nil {
					s = nil
					if errors.Is(err, ErrClosed) { // the Client is closed: no redial
						for _, a := range rest {
							l.answer(int64(a.Entry), err)
						}
						break
					}
					l.requeue(rest)
					failed = true
					l.c.log.Debug("journal/client: bookie link: cannot open the add stream, retrying", "bookie", l.bookie, "err", err, "in", delay)
					break
				}
			}
			n := chunk(rest)
			l.mu.Lock()
			for _, a := range rest[:n] {
				l.sent[a.Entry] = a
			}
			l.mu.Unlock()
			if err := s.AddBatch(rest[:n]); err != nil {
				// Not sent, and no answer will come for them.
				l.mu.Lock()
				for _, a := range rest[:n] {
					delete(l.sent, a.Entry)
				}
				l.mu.Unlock()
				l.requeue(rest)
				failed = true
				s.Abort()
				s = nil
				break
			}
			rest = rest[n:]
		}
		if down && !failed && s != nil && len(batch) > 0 {
			l.c.log.Info("journal/client: bookie link reconnected", "bookie", l.bookie, "sent", len(batch))
			down = false
		}
		clear(batch)
		if failed || broken {
			down = down || failed
			if closing {
				return // Close with adds the bookie never took: they fail
			}
			wait = time.After(delay)
			delay = min(max(2*delay, minRedial), maxRedial)
			continue
		}
		if closing {
			return
		}
	}
}

// requeue puts adds that were not sent back at the head of the queue.
func (l *link) requeue(adds []bookierpc.Add) {
	l.mu.Lock()
	l.queue = append(append(make([]bookierpc.Add, 0, len(adds)+len(l.queue)), adds...), l.queue...)
	l.mu.Unlock()
}

// ended reports whether s has ended (every add it held was answered).
func ended(s *bookierpc.AddStream) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
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
	return cc.AddStream(l.ctx, l.result)
}

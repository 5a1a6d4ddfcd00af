package client

import (
	"context"
	"errors"
	"sync"
	"time"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

// A bookieConn is the Client's one AddEntries stream to a bookie, shared
// by every ledger writer and recovery of the Client that adds to it, as
// BookKeeper shares one channel per bookie: adds of many ledgers travel in
// one message. Its goroutine sends what the links queued, so no event loop
// blocks on the network (bookierpc's AddBatch blocks under flow control),
// and takes the whole queue at each turn: adds that arrive while it sends
// go out together in the next message.
//
// A broken stream is not a failed bookie: when the stream cannot be opened
// or ends (the bookie restarted, a connection dropped), the conn redials
// with backoff and resends on the new stream every add the old one left
// unanswered, as BookKeeper's per-bookie channel does; those adds get no
// answer meanwhile, so each owner's add timeout (link.stuck) is what
// declares the bookie failed. Resending to the same bookie is what the
// protocol allows (checked against DESIGN.md's Journal section): a
// bookie's add is idempotent for the same ledger, entry and payload (it
// journals it again and rewrites the entry's index record, as replay does:
// journal/bookie doc), and the writer resends the very bytes it sent, so
// no offset gets two values; a bookie that comes back at the same id kept
// its data ("a cookie per disk so a wiped bookie cannot silently rejoin"),
// and it acks only after its journal is fsynced, so its acks count like any
// other and an entry is still acknowledged only on Qa real acks; a fenced
// ledger refuses the resent add (FENCED), which stops the writer. A
// bookie's own refusal (a *StatusError: fenced, failed, too large...) is
// answered to the owner at once, except STATUS_CLOSED (the bookie is
// shutting down), which is treated like a broken stream.
type bookieConn struct {
	c      *Client
	bookie string
	ctx    context.Context // the Client's: ends on Client.Close
	notify chan struct{}
	done   chan struct{}

	mu       sync.Mutex
	queue    []bookierpc.Add // to send; Tag is the *link
	stream   *bookierpc.AddStream
	broken   bool // an add came back unanswered: redial
	progress bool // an add was acknowledged since the last redial
	stopped  bool // run returned: nothing more is sent
	// While run lingers, the bytes queued (payload + overhead each): send
	// wakes it as soon as they fill a message.
	lingering    bool
	lingerQueued int
}

// link is one owner's (a ledger writer's or a recovery's) adds to one
// bookie, over the Client's bookieConn to it. Answers queue in the link,
// in the bookie's completion order, and ready tells the owner when the
// queue goes from empty to not empty (one wake-up for a burst of answers,
// not one per answer); the owner drains it with take.
type link struct {
	conn   *bookieConn // nil once the Client is closed: every add fails
	bookie string
	ready  func(*link)

	rmu     sync.Mutex
	results []linkResult

	// Guarded by conn.mu.
	n       int           // adds handed to the conn and not yet answered to the owner
	cut     bool          // aborted: nothing more is sent, answers are failures
	closing bool          // close: answer the rest, never wait for a redial
	idle    chan struct{} // closed once closing and n is 0

	// Loop-owned bookkeeping for add timeouts.
	outstanding int
	since       time.Time // last progress while outstanding > 0
	waiting     bool      // stuck with no replacement: logged once
}

// linkResult is one add's answer: err nil once the bookie synced it;
// sent and answered are its round trip on the stream (stamps, trace.go; 0
// for an add failed without an answer).
type linkResult struct {
	entry          int64
	err            error
	sent, answered int64
}

func newLink(c *Client, bookie string, ready func(*link)) *link {
	return &link{conn: c.addConn(bookie), bookie: bookie, ready: ready, idle: make(chan struct{})}
}

// answer queues an add's answer and wakes the owner if it was idle.
func (l *link) answer(entry int64, err error) { l.answerAt(linkResult{entry: entry, err: err}) }

func (l *link) answerAt(r linkResult) {
	l.rmu.Lock()
	wake := len(l.results) == 0
	l.results = append(l.results, r)
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
	bc := l.conn
	if bc == nil {
		l.answer(int64(a.Entry), ErrClosed)
		return
	}
	a.Tag = l
	bc.mu.Lock()
	if bc.stopped || l.cut {
		bc.mu.Unlock()
		l.answer(int64(a.Entry), bc.stopErr())
		return
	}
	l.n++
	wake := len(bc.queue) == 0
	bc.queue = append(bc.queue, a)
	if bc.lingering {
		bc.lingerQueued += len(a.Payload) + bookierpc.BatchAddOverhead
		if fullMessage(bc.lingerQueued, len(bc.queue)) {
			bc.lingering, wake = false, true
		}
	}
	bc.mu.Unlock()
	if wake { // see signal
		signal(bc.notify)
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

// close waits for the answer to every add sent; adds the bookie cannot
// take now (its stream is broken) fail instead of waiting for a redial.
func (l *link) close() {
	bc := l.conn
	if bc == nil {
		return
	}
	bc.mu.Lock()
	if !l.closing {
		l.closing = true
		if l.n == 0 {
			close(l.idle)
		}
	}
	bc.mu.Unlock()
	signal(bc.notify) // fails what is queued if the conn is down
	select {
	case <-l.idle:
	case <-bc.done:
	}
}

// abort ends the link at once: adds not yet answered are reported failed
// (what the bookie answers for them later is dropped), and the conn sends
// no more of them.
func (l *link) abort() {
	bc := l.conn
	if bc == nil {
		return
	}
	bc.mu.Lock()
	if l.cut {
		bc.mu.Unlock()
		return
	}
	l.cut = true
	var left []bookierpc.Add
	bc.queue, left = withdraw(bc.queue, l, left)
	s := bc.stream
	bc.mu.Unlock()
	if s != nil {
		left = s.Withdraw(func(a *bookierpc.Add) bool { return a.Tag == l }, left)
	}
	bc.fail(left, context.Canceled)
}

// withdraw moves the adds of l from q to into.
func withdraw(q []bookierpc.Add, l *link, into []bookierpc.Add) (rest, _ []bookierpc.Add) {
	rest = q[:0]
	for _, a := range q {
		if a.Tag == l {
			into = append(into, a)
		} else {
			rest = append(rest, a)
		}
	}
	clear(q[len(rest):])
	return rest, into
}

// fail answers adds, which no one else will answer, with err.
func (bc *bookieConn) fail(adds []bookierpc.Add, err error) {
	for _, a := range adds {
		l := a.Tag.(*link)
		bc.mu.Lock()
		l.settle()
		bc.mu.Unlock()
		l.answer(int64(a.Entry), err)
	}
}

// settle counts one of l's adds answered; conn.mu is held.
func (l *link) settle() {
	l.n--
	if l.n == 0 && l.closing {
		close(l.idle)
	}
}

// stopErr is what an add fails with once the conn stopped (the Client is
// closed) or its link was cut.
func (bc *bookieConn) stopErr() error {
	if bc.ctx.Err() != nil {
		return ErrClosed
	}
	return context.Canceled
}

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
// add back in the queue for the next stream (unless its link is closing or
// the conn stopping); anything else goes to the owner, as a failure if the
// link was cut meanwhile.
func (bc *bookieConn) result(r bookierpc.AddResult) {
	l := r.Tag.(*link)
	err := r.Err
	bc.mu.Lock()
	switch {
	case l.cut:
		err = context.Canceled
	case err != nil && transient(err) && !l.closing && !bc.stopped && bc.ctx.Err() == nil:
		bc.queue = append(bc.queue, r.Add)
		bc.broken = true
		bc.mu.Unlock()
		signal(bc.notify)
		return
	case err == nil:
		bc.progress = true
	}
	l.settle()
	bc.mu.Unlock()
	l.answerAt(linkResult{entry: int64(r.Entry), err: err, sent: stamp(r.Sent), answered: stamp(r.Answered)})
}

// Redial backoff of a conn whose stream broke: from minRedial, doubling up
// to maxRedial, back to minRedial once an add is acknowledged. (The gRPC
// connection has its own reconnect backoff, bookieConnectParams.)
const (
	minRedial = 20 * time.Millisecond
	maxRedial = 500 * time.Millisecond
)

// A conn woken by less than a message's worth of queued adds within
// lingerWhen of its last turn waits up to linger for more before it sends:
// at a moderate rate each add would otherwise wake it and go alone in a
// message, which costs a socket write and a read on both sides per add and
// doubles the CPU per entry. It stops waiting as soon as the queue holds
// a message's worth (fullMessage; send wakes it): a Go timer this short
// fires after about a millisecond (the netpoller waits in whole
// milliseconds), two or more on a loaded machine, while at the rates that
// make it linger a message fills in a few hundred µs (1 KiB adds: 15 per
// message, 47,000 per second per bookie at 70,000 appends/s with Qw 2 of
// E 3). A message's worth is lingerBelow adds or lingerBytes: three
// quarters of MaxBatchBytes, so that the adds queued while the conn wakes
// still fit in the message. linger is small next to the bookie's group
// commit (an fdatasync).
const (
	linger      = 200 * time.Microsecond
	lingerWhen  = 2 * time.Millisecond
	lingerBelow = 32
	lingerBytes = bookierpc.MaxBatchBytes * 3 / 4
)

// fullMessage reports whether n queued adds of bytes in all (payload +
// overhead each) are a message's worth.
func fullMessage(bytes, n int) bool { return n >= lingerBelow || bytes >= lingerBytes }

// startLinger reports whether the conn should wait for more adds (less
// than a message is queued) and if so has send wake it once a message's
// worth is queued.
func (bc *bookieConn) startLinger() bool {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	n, bytes := len(bc.queue), 0
	if n == 0 {
		return false
	}
	for _, a := range bc.queue {
		bytes += len(a.Payload) + bookierpc.BatchAddOverhead
	}
	if fullMessage(bytes, n) {
		return false
	}
	bc.lingering, bc.lingerQueued = true, bytes
	return true
}

// stopLinger ends a wait of startLinger.
func (bc *bookieConn) stopLinger() {
	bc.mu.Lock()
	bc.lingering = false
	bc.mu.Unlock()
}

func (bc *bookieConn) run() {
	var s *bookierpc.AddStream
	defer func() {
		if s != nil {
			s.Abort() // the Client is closing: its adds fail (stopped)
		}
		bc.mu.Lock()
		bc.stopped = true
		left := bc.queue
		bc.queue, bc.stream = nil, nil
		bc.mu.Unlock()
		bc.fail(left, ErrClosed)
		close(bc.done)
	}()
	var (
		batch []bookierpc.Add
		wait  <-chan time.Time // backing off before the next dial
		delay time.Duration
		down  bool      // the stream broke and no add went out on a new one yet
		last  time.Time // the last turn
		lt    = time.NewTimer(linger)
	)
	lt.Stop()
	defer lt.Stop()
	setStream := func(ns *bookierpc.AddStream) {
		bc.mu.Lock()
		bc.stream = ns
		bc.mu.Unlock()
	}
	for {
		select {
		case <-bc.notify:
		case <-wait:
			wait = nil
		case <-bc.ctx.Done():
		}
		if bc.ctx.Err() != nil {
			return
		}
		if wait != nil {
			bc.failClosing() // more to send, but still backing off
			continue
		}
		if s != nil && time.Since(last) < lingerWhen && bc.startLinger() {
			// Adds trickle in (a moderate rate): let more arrive, so
			// that they share one message instead of one each, until a
			// message's worth is queued.
			lt.Reset(linger)
			select {
			case <-bc.notify:
			case <-lt.C:
			case <-bc.ctx.Done():
			}
			lt.Stop()
			bc.stopLinger()
			if bc.ctx.Err() != nil {
				return
			}
		}
		last = time.Now()
		bc.mu.Lock()
		broken := bc.broken
		bc.broken = false
		if bc.progress {
			bc.progress, delay = false, 0
		}
		batch = append(batch[:0], bc.queue...)
		clear(bc.queue)
		bc.queue = bc.queue[:0]
		bc.mu.Unlock()
		if s != nil && (broken || ended(s)) {
			if !down && !bc.c.isClosed() { // a closing Client cuts its streams: no news
				bc.c.log.Info("journal/client: bookie add stream broke, reconnecting", "bookie", bc.bookie, "err", s.Err())
				down = true
			}
			setStream(nil)
			s.Abort() // every add it held was answered or queued again
			s = nil
		}
		failed := false
		for rest := batch; len(rest) > 0; {
			if s == nil {
				var err error
				if s, err = bc.open(); err != nil {
					s = nil
					if errors.Is(err, ErrClosed) { // the Client is closed: no redial
						bc.fail(rest, err)
						break
					}
					bc.requeue(rest)
					failed = true
					bc.c.log.Debug("journal/client: bookie link: cannot open the add stream, retrying", "bookie", bc.bookie, "err", err, "in", delay)
					break
				}
				setStream(s)
			}
			n := chunk(rest)
			if err := s.AddBatch(rest[:n]); err != nil {
				// Not sent, and no answer will come for them.
				bc.requeue(rest)
				failed = true
				setStream(nil)
				s.Abort()
				s = nil
				break
			}
			rest = rest[n:]
		}
		if s != nil && len(batch) > 0 {
			bc.withdrawCut(s, batch)
		}
		if down && !failed && s != nil && len(batch) > 0 {
			bc.c.log.Info("journal/client: bookie link reconnected", "bookie", bc.bookie, "sent", len(batch))
			down = false
		}
		clear(batch)
		if failed || broken {
			down = down || failed
			bc.failClosing()
			wait = time.After(delay)
			delay = min(max(2*delay, minRedial), maxRedial)
		}
	}
}

// withdrawCut takes back from s the adds of batch whose link was cut while
// the batch was being sent (abort withdrew what s held before).
func (bc *bookieConn) withdrawCut(s *bookierpc.AddStream, batch []bookierpc.Add) {
	bc.mu.Lock()
	cut := false
	for _, a := range batch {
		if a.Tag.(*link).cut {
			cut = true
			break
		}
	}
	bc.mu.Unlock()
	if !cut {
		return
	}
	left := s.Withdraw(func(a *bookierpc.Add) bool {
		bc.mu.Lock()
		defer bc.mu.Unlock()
		return a.Tag.(*link).cut
	}, nil)
	bc.fail(left, context.Canceled)
}

// failClosing fails the queued adds of closing links: with the stream
// down, close does not wait for a redial ("Close with adds the bookie
// never took: they fail").
func (bc *bookieConn) failClosing() {
	bc.mu.Lock()
	var left []bookierpc.Add
	rest := bc.queue[:0]
	for _, a := range bc.queue {
		if a.Tag.(*link).closing {
			left = append(left, a)
		} else {
			rest = append(rest, a)
		}
	}
	clear(bc.queue[len(rest):])
	bc.queue = rest
	bc.mu.Unlock()
	bc.fail(left, bookierpc.ErrStreamClosed)
}

// requeue puts adds that were not sent back at the head of the queue,
// except those of links cut meanwhile, which fail.
func (bc *bookieConn) requeue(adds []bookierpc.Add) {
	var cut []bookierpc.Add
	bc.mu.Lock()
	q := make([]bookierpc.Add, 0, len(adds)+len(bc.queue))
	for _, a := range adds {
		if a.Tag.(*link).cut {
			cut = append(cut, a)
		} else {
			q = append(q, a)
		}
	}
	bc.queue = append(q, bc.queue...)
	bc.mu.Unlock()
	bc.fail(cut, context.Canceled)
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

func (bc *bookieConn) open() (*bookierpc.AddStream, error) {
	cc, err := bc.c.bookie(bc.bookie)
	if err != nil {
		return nil, err
	}
	return cc.AddStream(bc.ctx, bc.result)
}

package mqtt

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/pubsub"
)

// closeError ends a connection; in v5 the server sends DISCONNECT with
// code first (MQTT 5.0 §4.13).
type closeError struct {
	code packet.ReasonCode
	msg  string
}

func (e *closeError) Error() string { return "mqtt: " + e.msg + " (" + e.code.String() + ")" }

// conn is one client connection. Two goroutines serve it: serve reads and
// answers packets; writeLoop sends the session's queued messages. Writes
// from both go through wmu.
type conn struct {
	outPub    packet.Publish // writePublishLocked's packet, under wmu (no allocation per delivery)
	outAck    packet.Puback  // replyPuback's packet, under wmu (no allocation per QoS 1 PUBLISH)
	slab0     []delivery     // the QoS 0 deliveries of the writer's last take (session.take, sent0), under sess.mu
	batchMs   []*pubsub.Message
	batchPos  []Position
	batchErrs []error
	s         *Server
	nc        net.Conn
	listener  string
	remote    string
	r         *packet.Reader

	wmu           sync.Mutex
	w             *packet.Writer
	wdl           time.Time // the write deadline last armed by flushLocked; under wmu
	kicked        atomic.Bool
	writerStarted atomic.Bool

	// Set by the handshake, then owned by serve.
	version     packet.Version
	clientID    string
	sess        *session
	readTimeout time.Duration
	rdl         time.Time        // the read deadline last armed by readLoop
	lastWords   bool             // serve sent a last packet (DISCONNECT, refusing CONNACK): lastWordsClose
	pending     []pendingPublish // QoS 0/1 PUBLISHes read, to append as one batch
	inflightMax int
	aliases     map[uint16]string // inbound topic aliases
	outAliases  *aliasTable       // outbound topic aliases (aliases.go), under wmu; nil: none
	will        *pubsub.Message
	willDelay   time.Duration
	connExpiry  uint32              // Session Expiry Interval of CONNECT (v5), seconds
	who         *auth.Client        // for ACL checks (authz.go); no password
	bucket      *tokenBucket        // the publish rate limit (ratelimit.go); nil: none
	enhanced    *enhanced           // the result of MQTT 5 enhanced authentication (authz.go)
	reauth      *auth.SCRAMExchange // a re-authentication under way (authz.go onAuth); nil: none

	closing    chan struct{}
	closeOnce  sync.Once
	writerDone chan struct{}
	done       chan struct{} // closed when serve has cleaned up
	bindGen    uint64        // the session's bind count when attach bound c (session.armWill)
}

func newConn(s *Server, nc listen.Conn) *conn {
	cc := &countingConn{Conn: nc, in: s.m.bytesIn.WithLabelValues(nc.Listener()), out: s.m.bytesOut.WithLabelValues(nc.Listener())}
	c := &conn{s: s, nc: cc, listener: nc.Listener(), remote: nc.RemoteAddr().String(),
		closing: make(chan struct{}), writerDone: make(chan struct{}), done: make(chan struct{})}
	// A small first buffer keeps idle connections cheap (they only
	// ever read PINGREQ); a large packet or a burst moves to a larger
	// buffer (a pooled one for bursts), dropped once consumed.
	c.r = packet.NewReaderSize(cc, s.opts.MaxPacketSize, 128)
	if s.opts.MaxPublishRate > 0 {
		c.bucket = newTokenBucket(s.opts.MaxPublishRate, s.opts.PublishBurst)
	}
	c.w = packet.NewWriter(cc, 0)
	return c
}

// countingConn counts bytes for the quire_mqtt_*_bytes_total metrics.
type countingConn struct {
	net.Conn
	in, out prometheus.Counter
}

// NetConn returns the wrapped connection (listen.CloseWrite).
func (c *countingConn) NetConn() net.Conn { return c.Conn }

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.in.Add(float64(n))
	}
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.out.Add(float64(n))
	}
	return n, err
}

// close closes the network connection once; both goroutines then stop.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.closing)
		c.nc.Close()
	})
}

// stop is close for serve and writeLoop when they stop on an error,
// except on a kicked connection: kick closes it once its DISCONNECT is
// out, and the error may be the kick's own doing (flushLocked returns
// net.ErrClosed once kicked is set, before kick has taken wmu), so
// closing here could beat the DISCONNECT: the client got EOF instead.
func (c *conn) stop() {
	if !c.kicked.Load() {
		c.close()
	}
}

// finish ends the connection when serve stops: after a kick, it waits
// until kick has closed it (stop); otherwise it closes it, draining first
// after a last packet (lastWordsClose).
func (c *conn) finish() {
	switch {
	case c.kicked.Load():
		<-c.closing
	case c.lastWords:
		c.lastWordsClose()
	}
	c.close()
}

// Bounds of the drain before closing a connection the server ended with a
// last packet (DISCONNECT, refusing CONNACK): lastWordsClose.
const (
	drainTime  = time.Second
	drainBytes = 1 << 20
)

// lastWordsClose closes the connection after a last packet sent with
// input possibly unread (the rest of an oversized packet, packets behind
// a bad one): it half-closes (listen.CloseWrite), reads and discards the
// input until the client closes, drainBytes were read or drainTime
// passed, then closes. A plain close with unread input would make the
// kernel reset the connection, dropping the last packet if it was not
// sent yet and, at many clients, what they had not read of it.
func (c *conn) lastWordsClose() {
	if listen.CloseWrite(c.nc) {
		c.nc.SetReadDeadline(time.Now().Add(drainTime))
		io.CopyN(io.Discard, c.nc, drainBytes)
	}
	c.close()
}

// kickReasons are the Reason Strings of the DISCONNECTs kick sends.
var kickReasons = map[packet.ReasonCode]string{
	packet.SessionTakenOver:   "another connection with this client identifier took the session over",
	packet.ServerShuttingDown: "the server is shutting down",
}

// kick sends a v5 DISCONNECT with code (session taken over, server shutting
// down) and closes the connection. A writer stuck on a client that does not
// read is cut off by a short write deadline.
func (c *conn) kick(code packet.ReasonCode) {
	c.kicked.Store(true)
	c.shortDeadline()
	c.wmu.Lock()
	if c.version == packet.V5 {
		d := &packet.Disconnect{ReasonCode: code}
		d.Properties.ReasonString = kickReasons[code]
		if errors.Is(c.writeLocked(d), packet.ErrPeerPacketTooLarge) {
			d.Properties.ReasonString = ""
			c.writeLocked(d)
		}
		c.w.Flush()
	}
	c.wmu.Unlock()
	c.close()
}

func (c *conn) writeLocked(p packet.Packet) error {
	if err := c.w.WritePacket(p); err != nil {
		return err
	}
	c.s.m.packetsOut[p.Type()].Inc()
	return nil
}

func (c *conn) flushLocked() error {
	if c.kicked.Load() {
		return net.ErrClosed
	}
	if c.w.Buffered() == 0 {
		return nil
	}
	if t, ok := rearm(c.wdl, c.s.opts.WriteTimeout); ok {
		c.wdl = t
		c.nc.SetWriteDeadline(t)
	}
	return c.w.Flush()
}

// rearm returns the deadline to arm for timeout from now, and whether the
// armed one should be replaced. Re-arming costs a timer update per call,
// so a deadline is moved only once it lags by more than min(1 s,
// timeout/4), and is armed that much late: the effective timeout is
// between timeout and timeout+min(1 s, timeout/4).
func rearm(armed time.Time, timeout time.Duration) (time.Time, bool) {
	slack := min(time.Second, timeout/4)
	t := time.Now().Add(timeout + slack)
	return t, t.Sub(armed) > slack
}

// shortDeadline gives the writes that follow one second, for a last
// packet (DISCONNECT, refused CONNACK) to a client that may not read. It
// is set before taking wmu, to cut off a write stuck on such a client.
func (c *conn) shortDeadline() {
	t := time.Now().Add(time.Second)
	c.nc.SetWriteDeadline(t)
	c.wmu.Lock()
	c.wdl = t
	c.wmu.Unlock()
}

// sendShort is send with a one-second write deadline.
func (c *conn) sendShort(p packet.Packet) error {
	c.shortDeadline()
	return c.send(p)
}

// send writes p and flushes.
func (c *conn) send(p packet.Packet) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.writeLocked(p); err != nil {
		return err
	}
	return c.flushLocked()
}

// reply writes p, an answer to a packet read, without flushing: readLoop
// flushes once no whole packet is buffered, so the answers to a batch of
// packets go out in one write (or earlier, with the writer's deliveries).
func (c *conn) reply(p packet.Packet) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.kicked.Load() {
		return net.ErrClosed
	}
	return c.writeLocked(p)
}

// replyPuback is reply of a successful PUBACK for id. The packet is kept on
// c: a Puback with its properties is some 280 bytes, and one allocated per
// QoS 1 PUBLISH was a fifth of what a message allocated.
func (c *conn) replyPuback(id uint16) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.kicked.Load() {
		return net.ErrClosed
	}
	c.outAck = packet.Puback{PacketID: id}
	return c.writeLocked(&c.outAck)
}

// flushReplies writes out buffered replies.
func (c *conn) flushReplies() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *conn) serve() {
	defer c.s.removeConn(c)
	defer close(c.done)
	gauge := c.s.m.connections.WithLabelValues(c.listener)
	gauge.Inc()
	defer gauge.Dec()
	log := c.s.log.With("remote", c.remote, "listener", c.listener)

	present, err := c.handshake()
	if err != nil {
		log.Debug("mqtt connect refused", "err", err)
		c.finish()
		if c.sess != nil {
			// Bound by attach, then the CONNACK was not sent (a takeover
			// kicked it meanwhile): unbound as a closing connection is,
			// before done closes, or the session keeps a dead owner that
			// every later takeover kicks and waits for again.
			c.s.detach(c, c.sess)
		}
		return
	}
	log = log.With("client_id", c.clientID, "version", c.version.String())
	log.Debug("mqtt client connected", "session_present", present)
	// The writer starts with the first delivery: an idle connection has
	// one goroutine. A resumed session resends first.
	if present {
		c.startWriter(true)
	}
	c.sess.writer.Store(c)
	if c.sess.hasWork() {
		c.startWriter(false)
	}

	err = c.readLoop()
	normal := false
	var ce *closeError
	switch {
	case err == nil:
		normal = true
	case errors.As(err, &ce):
		c.s.m.closedBy.WithLabelValues(ce.code.String()).Inc()
		log.Debug("mqtt connection closed by the server", "reason", ce.code.String(), "err", ce.msg)
		if c.version == packet.V5 {
			c.sendReason(&packet.Disconnect{ReasonCode: ce.code}, ce.msg)
		}
	case c.kicked.Load():
	default:
		var pe *packet.Error
		if errors.As(err, &pe) {
			c.s.m.closedBy.WithLabelValues(pe.Code.String()).Inc()
			log.Debug("mqtt bad packet", "err", err)
			if c.version == packet.V5 {
				c.sendReason(&packet.Disconnect{ReasonCode: pe.Code}, pe.Error())
			}
		} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			log.Debug("mqtt connection lost", "err", err)
		}
	}
	c.finish()
	if c.writerStarted.CompareAndSwap(false, true) {
		close(c.writerDone) // no writer ever started, and none will now
	}
	<-c.writerDone
	c.s.detach(c, c.sess)
	if c.s.afterDetach != nil {
		c.s.afterDetach(c.clientID)
	}
	if normal || c.will == nil || c.s.ctx.Err() != nil {
		return
	}
	if c.willDelay == 0 {
		c.s.publishWill(c.will)
		return
	}
	// Not when a new connection to the session was made since (MQTT 5.0
	// §3.1.2.5); now when the session ended at detach.
	switch armed, now := c.sess.armWill(c.bindGen, c.will, c.willDelay, c.s.publishWill); {
	case armed:
		c.s.saveSession(c.sess, false, true) // the pending will survives a restart
	case now:
		c.s.publishWill(c.will)
	}
}

// refuse answers a CONNECT with a failure code and returns an error.
func (c *conn) refuse(code packet.ReasonCode, msg string) error {
	c.s.m.connects.WithLabelValues(code.String()).Inc()
	if c.version != packet.V5 {
		c.lastWords = true
		c.sendShort(&packet.Connack{ReturnCode: packet.ReturnCodeFor(code)})
	} else {
		c.sendReason(&packet.Connack{ReasonCode: code}, msg)
	}
	return &closeError{code: code, msg: msg}
}

// maxReasonString bounds the Reason String of a server-sent DISCONNECT or
// refusing CONNACK: it is for people reading logs, not a dump.
const maxReasonString = 200

// sendReason sends a v5 DISCONNECT or CONNACK (p) with msg as its Reason
// String (MQTT 5.0 §3.2.2.3.9, §3.14.2.2.3: allowed in these two packets
// whatever the client's Request Problem Information) — without it when
// it would exceed the client's Maximum Packet Size [MQTT-3.14.2-3].
//
// Internal failures and authentication refusals carry only what precedes
// the first ": " of msg: the rest is for the log (file paths, which of
// user or password was wrong).
func (c *conn) sendReason(p packet.Packet, msg string) error {
	var props *packet.Properties
	var code packet.ReasonCode
	switch p := p.(type) {
	case *packet.Disconnect:
		props, code = &p.Properties, p.ReasonCode
	case *packet.Connack:
		props, code = &p.Properties, p.ReasonCode
	default:
		return c.sendShort(p)
	}
	switch code {
	case packet.UnspecifiedError, packet.ServerUnavailable, packet.BadUserNameOrPassword, packet.NotAuthorized:
		msg, _, _ = strings.Cut(msg, ": ")
	}
	if len(msg) > maxReasonString {
		msg = msg[:maxReasonString]
	}
	for !utf8.ValidString(msg) { // a cut through a rune
		msg = msg[:len(msg)-1]
	}
	props.ReasonString = msg
	c.lastWords = true
	err := c.sendShort(p)
	if errors.Is(err, packet.ErrPeerPacketTooLarge) {
		props.ReasonString = ""
		err = c.send(p)
	}
	return err
}

// handshake reads CONNECT, binds the session and sends CONNACK.
func (c *conn) handshake() (present bool, err error) {
	opts := &c.s.opts
	c.nc.SetReadDeadline(time.Now().Add(opts.ConnectTimeout))
	p, err := c.r.ReadPacket()
	if err != nil {
		var pe *packet.Error
		if errors.As(err, &pe) {
			if rc, ok := pe.ReturnCode(); ok && pe.Class == packet.ErrUnsupportedVersion {
				c.w.SetVersion(packet.V311)
				c.s.m.connects.WithLabelValues(pe.Code.String()).Inc()
				c.send(&packet.Connack{ReturnCode: rc})
			} else if pe.Version == packet.V5 {
				c.w.SetVersion(packet.V5)
				c.refuse(pe.Code, pe.Detail)
			}
		}
		return false, err
	}
	c.s.m.packetsIn[packet.CONNECT].Inc()
	cp, ok := p.(*packet.Connect)
	if !ok {
		return false, errors.New("mqtt: first packet is not CONNECT")
	}
	c.wmu.Lock() // kick reads the version under wmu
	c.version = cp.Version
	c.w.SetVersion(cp.Version)
	c.wmu.Unlock()
	v5 := cp.Version == packet.V5

	id, assigned := cp.ClientID, false
	if id == "" {
		// MQTT 5.0 §3.1.3.1 and 3.1.1 §3.1.3.1: the server assigns an
		// identifier, in 3.1.1 only for a clean session; 3.1 requires one.
		if !v5 && (cp.Version == packet.V31 || !cp.CleanStart) {
			return false, c.refuse(packet.ClientIdentifierNotValid, "empty client identifier")
		}
		id, assigned = newClientID(), true
	}
	c.clientID = id
	if v5 && cp.Properties.AuthenticationMethod != "" {
		if err := c.enhancedAuth(cp); err != nil {
			return false, err
		}
	}
	actx, acancel := context.WithTimeout(c.s.ctx, opts.ConnectTimeout)
	err = c.authenticate(actx, cp)
	acancel()
	if err != nil {
		return false, err
	}

	var expiry time.Duration
	var ack packet.Connack
	switch {
	case v5:
		c.connExpiry = cp.Properties.SessionExpiryInterval
		expiry = expiryDuration(c.connExpiry, opts.MaxSessionExpiry)
		if c.connExpiry != 0 && time.Duration(c.connExpiry)*time.Second > opts.MaxSessionExpiry {
			ack.Properties.SessionExpiryInterval = uint32(opts.MaxSessionExpiry / time.Second)
		}
	case !cp.CleanStart:
		expiry = opts.MaxSessionExpiry
	}

	ka := cp.KeepAlive
	if v5 && opts.MaxKeepAlive > 0 && (ka == 0 || ka > opts.MaxKeepAlive) {
		ka = opts.MaxKeepAlive
		ack.Properties.ServerKeepAlive = ka
		ack.Properties.Set(packet.PropServerKeepAlive)
	}
	if ka > 0 {
		// [MQTT-3.1.2-24]: one and a half times the keep alive.
		c.readTimeout = time.Duration(ka) * 1500 * time.Millisecond
	}

	c.inflightMax = opts.MaxInflight
	if v5 {
		if rm := cp.Properties.ReceiveMaximum; rm > 0 && int(rm) < c.inflightMax {
			c.inflightMax = int(rm)
		}
		if mps := cp.Properties.MaximumPacketSize; mps > 0 {
			c.w.SetMaxPacketSize(int(mps))
		}
		if n := min(int(cp.Properties.TopicAliasMaximum), opts.OutboundTopicAliases); n > 0 {
			c.outAliases = newAliasTable(n)
		}
	}
	if cp.Will != nil {
		c.will = willMessage(cp.Will, id, v5)
		if v5 {
			c.willDelay = time.Duration(cp.Will.Properties.WillDelayInterval) * time.Second
		}
	}

	ctx, cancel := context.WithTimeout(c.s.ctx, opts.ConnectTimeout)
	defer cancel()
	sess, present, err := c.s.attach(ctx, c, id, cp.CleanStart, expiry)
	if err != nil {
		return false, c.refuse(packet.ServerUnavailable, err.Error())
	}
	c.sess = sess
	c.s.m.connects.WithLabelValues("accepted").Inc()

	ack.SessionPresent = present
	if v5 {
		if assigned {
			ack.Properties.AssignedClientIdentifier = id
		}
		ack.Properties.ReceiveMaximum = opts.ReceiveMaximum
		ack.Properties.MaximumPacketSize = uint32(opts.MaxPacketSize)
		ack.Properties.TopicAliasMaximum = opts.TopicAliasMaximum
		if c.enhanced != nil {
			ack.Properties.AuthenticationMethod = c.enhanced.method
			ack.Properties.AuthenticationData = c.enhanced.data
		}
	}
	if err := c.send(&ack); err != nil {
		return false, err
	}
	return present, nil
}

func expiryDuration(secs uint32, maxExpiry time.Duration) time.Duration {
	if secs == math.MaxUint32 {
		return maxExpiry
	}
	return min(time.Duration(secs)*time.Second, maxExpiry)
}

func newClientID() string {
	var b [12]byte
	rand.Read(b[:])
	return "quire-" + hex.EncodeToString(b[:])
}

func willMessage(w *packet.Will, client string, v5 bool) *pubsub.Message {
	m := &pubsub.Message{Topic: w.Topic, Payload: append([]byte(nil), w.Payload...), QoS: byte(w.QoS),
		Retain: w.Retain, Publisher: client}
	if v5 {
		setMessageProps(m, &w.Properties, time.Now())
	}
	return m
}

// setMessageProps copies the PUBLISH (or will) properties a message keeps.
func setMessageProps(m *pubsub.Message, p *packet.Properties, now time.Time) {
	m.PayloadFormat = p.PayloadFormatIndicator
	m.ContentType = p.ContentType
	m.ResponseTopic = p.ResponseTopic
	if p.CorrelationData != nil {
		m.CorrelationData = append([]byte(nil), p.CorrelationData...)
	}
	if p.Has(packet.PropMessageExpiryInterval) {
		m.Expiry = now.Add(time.Duration(p.MessageExpiryInterval) * time.Second)
	}
	if len(p.UserProperties) > 0 {
		m.Headers = make([]pubsub.Header, len(p.UserProperties))
		for i, u := range p.UserProperties {
			m.Headers[i] = pubsub.Header{Key: u.Key, Value: u.Value}
		}
	}
}

// pendingPublish is a PUBLISH waiting in conn.pending for its batch.
type pendingPublish struct {
	m   *pubsub.Message
	qos packet.QoS
	id  uint16
}

// maxBatch bounds the PUBLISHes appended as one batch.
const maxBatch = 256

// batchable reports whether a QoS 0/1 PUBLISH of topic may wait in
// c.pending: the storage appends batches and the message is not delayed.
func (c *conn) batchable(qos packet.QoS, topic string) bool {
	_, ok := c.s.opts.Storage.(BatchStorage)
	return ok && qos != packet.QoS2 && !strings.HasPrefix(topic, DelayedPrefix)
}

// commitBatch appends the pending PUBLISHes in one BatchStorage call (a
// durable engine syncs the batch once), then hands each to the
// subscribers and answers it, in the order they were read: a PUBACK only
// once its message is stored.
func (c *conn) commitBatch() error {
	if len(c.pending) == 0 {
		return nil
	}
	batch := c.pending
	c.pending = nil
	ms := grow(&c.batchMs, len(batch))
	for i := range batch {
		ms[i] = batch[i].m
	}
	pos := grow(&c.batchPos, len(batch))
	errs := grow(&c.batchErrs, len(batch))
	c.s.opts.Storage.(BatchStorage).AppendBatch(c.s.ctx, ms, pos, errs)
	var first error
	for i, pp := range batch {
		if errs[i] != nil {
			c.s.m.storageErrors.Inc()
			if err := c.publishFailed(pp.m, pp.qos, pp.id, errs[i]); err != nil && first == nil {
				first = err
			}
			continue
		}
		c.s.stored(c.s.ctx, pp.m, pos[i])
		if pp.qos == packet.QoS1 && first == nil {
			first = c.replyPuback(pp.id)
		}
	}
	return first
}

// publishFailed answers a PUBLISH whose message was not stored.
func (c *conn) publishFailed(m *pubsub.Message, qos packet.QoS, id uint16, err error) error {
	c.s.log.Warn("mqtt publish not stored", "client_id", c.clientID, "topic", m.Topic, "err", err)
	code := packet.UnspecifiedError
	var re *reasonError
	if errors.As(err, &re) {
		code = re.code // a refused delayed publish (delayed.go)
	}
	switch {
	case qos == packet.QoS0:
		c.s.m.dropped.WithLabelValues(dropStorageFailure).Inc()
		return nil
	case c.version == packet.V5:
		if qos == packet.QoS1 {
			return c.reply(&packet.Puback{PacketID: id, ReasonCode: code})
		}
		return c.reply(&packet.Pubrec{PacketID: id, ReasonCode: code})
	default:
		// v3 cannot refuse a PUBLISH: close, so the client resends it
		// on its next connection.
		return &closeError{code: code, msg: "publish not stored: " + err.Error()}
	}
}

// readLoop handles packets until DISCONNECT (nil) or an error.
func (c *conn) readLoop() error {
	if c.readTimeout == 0 {
		c.nc.SetReadDeadline(time.Time{})
	}
	for {
		if !c.r.Ready() {
			// The peer's next packet is not here yet: store the
			// PUBLISHes read and send the answers before waiting for it.
			if err := c.commitBatch(); err != nil {
				return err
			}
			if err := c.flushReplies(); err != nil {
				return err
			}
		}
		if c.readTimeout > 0 {
			if t, ok := rearm(c.rdl, c.readTimeout); ok {
				c.rdl = t
				c.nc.SetReadDeadline(t)
			}
		}
		p, err := c.r.ReadPacket()
		if err != nil {
			c.commitBatch() // those before bad input
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !c.kicked.Load() {
				return &closeError{code: packet.KeepAliveTimeout, msg: "no packet within 1.5 times the keep alive"}
			}
			return err
		}
		c.s.m.packetsIn[p.Type()].Inc()
		if pp, ok := p.(*packet.Publish); !ok || pp.QoS == packet.QoS2 {
			// Answers and effects keep the order of the packets.
			if err := c.commitBatch(); err != nil {
				return err
			}
		}
		switch p := p.(type) {
		case *packet.Publish:
			if c.bucket != nil {
				// The wait for a token must not hold back the answers.
				if err := c.commitBatch(); err != nil {
					return err
				}
				if err := c.flushReplies(); err != nil {
					return err
				}
				waited, ok := c.bucket.take(c.closing)
				c.s.m.throttled.Add(waited.Seconds())
				if !ok {
					return net.ErrClosed
				}
			}
			err = c.onPublish(p)
		case *packet.Puback:
			c.sess.acked(p.PacketID, false)
		case *packet.Pubrec:
			if p.ReasonCode.IsError() {
				c.completed(c.sess.acked(p.PacketID, false)) // the receiver refused it: done
			} else {
				rel := &packet.Pubrel{PacketID: p.PacketID}
				if d := c.sess.received(p.PacketID); d == nil {
					rel.ReasonCode = packet.PacketIdentifierNotFound
				} else if err = c.persistOutbound([]*delivery{d}); err != nil {
					return err // no PUBREL before its state is stored
				}
				err = c.reply(rel)
			}
		case *packet.Pubrel:
			comp := &packet.Pubcomp{PacketID: p.PacketID}
			c.sess.mu.Lock()
			_, ok := c.sess.inQoS2[p.PacketID]
			delete(c.sess.inQoS2, p.PacketID)
			c.sess.mu.Unlock()
			if !ok {
				comp.ReasonCode = packet.PacketIdentifierNotFound
			} else if c.s.persistent() && c.sess.stored.Load() {
				if err := c.s.opts.Store.DeleteInbound(c.clientID, p.PacketID); err != nil {
					c.s.m.storageErrors.Inc()
					return &closeError{code: packet.UnspecifiedError, msg: "storing QoS 2 state: " + err.Error()}
				}
			}
			err = c.reply(comp)
		case *packet.Pubcomp:
			c.completed(c.sess.acked(p.PacketID, true))
		case *packet.Subscribe:
			err = c.onSubscribe(p)
		case *packet.Unsubscribe:
			err = c.onUnsubscribe(p)
		case *packet.Pingreq:
			err = c.reply(&packet.Pingresp{})
		case *packet.Disconnect:
			c.flushReplies()
			return c.onDisconnect(p)
		case *packet.Auth:
			err = c.onAuth(p)
		default:
			// A server-to-client packet (MQTT 5.0 §4.13.1).
			return &closeError{code: packet.ProtocolError, msg: "unexpected " + p.Type().String()}
		}
		if err != nil {
			return err
		}
	}
}

func (c *conn) onPublish(p *packet.Publish) error {
	topic := p.Topic
	if c.version == packet.V5 && p.Properties.Has(packet.PropTopicAlias) {
		a := p.Properties.TopicAlias
		if a == 0 || a > c.s.opts.TopicAliasMaximum {
			return &closeError{code: packet.TopicAliasInvalid, msg: "topic alias out of range"}
		}
		if c.aliases == nil {
			c.aliases = map[uint16]string{}
		}
		if topic == "" {
			var ok bool
			if topic, ok = c.aliases[a]; !ok {
				return &closeError{code: packet.ProtocolError, msg: "unknown topic alias"}
			}
		} else {
			c.aliases[a] = topic
		}
	}
	batch := c.batchable(p.QoS, topic)
	if !batch {
		if err := c.commitBatch(); err != nil {
			return err
		}
	}
	if !c.allowed(auth.Publish, topic) {
		if err := c.commitBatch(); err != nil {
			return err
		}
		return c.refusePublish(p)
	}
	if p.QoS == packet.QoS2 {
		c.sess.mu.Lock()
		_, dup := c.sess.inQoS2[p.PacketID]
		n := len(c.sess.inQoS2)
		c.sess.mu.Unlock()
		if dup {
			// Already stored: acknowledge again, do not publish twice
			// (MQTT 5.0 §4.3.3).
			return c.reply(&packet.Pubrec{PacketID: p.PacketID})
		}
		if n >= int(c.s.opts.ReceiveMaximum) {
			return &closeError{code: packet.ReceiveMaximumExceeded, msg: "too many QoS 2 messages awaiting PUBREL"}
		}
	}
	now := time.Now()
	m := &pubsub.Message{Topic: topic, Payload: append([]byte(nil), p.Payload...), QoS: byte(p.QoS),
		Retain: p.Retain, Publisher: c.clientID, Time: now}
	if c.version == packet.V5 {
		setMessageProps(m, &p.Properties, now)
	}
	if batch {
		c.pending = append(c.pending, pendingPublish{m: m, qos: p.QoS, id: p.PacketID})
		if len(c.pending) >= maxBatch {
			return c.commitBatch()
		}
		return nil
	}
	recorded, err := c.recordInbound(p, m)
	if err != nil {
		return err
	}
	var delayedPID uint16 // recorded with a delayed publish, in one batch
	if p.QoS == packet.QoS2 && !recorded && c.s.persistent() && c.sess.stored.Load() {
		delayedPID = p.PacketID
	}
	if err := c.s.publishOrDelay(c.s.ctx, m, delayedPID); err != nil {
		if recorded {
			c.forgetInbound(p.PacketID)
		}
		return c.publishFailed(m, p.QoS, p.PacketID, err)
	}
	switch p.QoS {
	case packet.QoS1:
		return c.replyPuback(p.PacketID)
	case packet.QoS2:
		c.sess.awaitRelease(p.PacketID)
		return c.reply(&packet.Pubrec{PacketID: p.PacketID})
	}
	return nil
}

func (c *conn) onSubscribe(p *packet.Subscribe) error {
	v5 := c.version == packet.V5
	var subID uint32
	if len(p.Properties.SubscriptionIdentifiers) > 0 {
		subID = p.Properties.SubscriptionIdentifiers[0]
	}
	codes := make([]packet.ReasonCode, len(p.Subscriptions))
	var retained []pubsub.Subscription
	for i, sub := range p.Subscriptions {
		group, filter, ok := pubsub.ParseShared(sub.Filter)
		if !ok || !packet.ValidTopicFilter(sub.Filter) {
			codes[i] = packet.TopicFilterInvalid
			if !v5 {
				codes[i] = packet.UnspecifiedError // v3 SUBACK failure 0x80
			}
			continue
		}
		if !c.allowed(auth.Subscribe, filter) {
			codes[i] = packet.NotAuthorized
			if !v5 {
				codes[i] = packet.UnspecifiedError // v3 SUBACK failure 0x80
			}
			continue
		}
		if group != "" && sub.NoLocal && v5 {
			return &closeError{code: packet.ProtocolError, msg: "No Local on a shared subscription"}
		}
		ps := pubsub.Subscription{Client: c.clientID, Filter: filter, Group: group, QoS: byte(min(sub.QoS, packet.QoS2)),
			NoLocal: sub.NoLocal, RetainAsPublished: sub.RetainAsPublished, RetainHandling: sub.RetainHandling,
			ID: subID, Owner: c.sess}
		existed := c.s.tree.Subscribe(ps)
		c.sess.mu.Lock()
		if c.sess.subs != nil {
			c.sess.subs[sub.Filter] = ps
		}
		c.sess.mu.Unlock()
		codes[i] = packet.ReasonCode(ps.QoS)
		if group == "" && (ps.RetainHandling == 0 || ps.RetainHandling == 1 && !existed) {
			retained = append(retained, ps)
		}
	}
	// The retained messages are looked up before the SUBACK: once the
	// client has it, a retained message published by someone else must
	// reach it once (live), not also from a lookup that comes later.
	var ds []delivery
	for _, sub := range retained {
		c.s.matchRetained(sub.Filter, func(m *pubsub.Message) bool {
			d := delivery{msg: m, qos: min(m.QoS, sub.QoS), retain: true}
			if sub.ID != 0 {
				d.subIDs = []uint32{sub.ID}
			}
			ds = append(ds, d)
			return true
		})
	}
	if err := c.s.saveSession(c.sess, true, true, ds...); err != nil { // ds among its copies
		return &closeError{code: packet.UnspecifiedError, msg: "storing the session: " + err.Error()}
	}
	if err := c.send(&packet.Suback{PacketID: p.PacketID, ReasonCodes: codes}); err != nil {
		return err
	}
	// Retained messages follow the SUBACK [MQTT-3.3.1-9].
	for _, d := range ds {
		if reason := c.sess.enqueue(d, c.s.opts.MaxQueued); reason != "" {
			c.s.m.dropped.WithLabelValues(reason).Inc()
		}
	}
	return nil
}

func (c *conn) onUnsubscribe(p *packet.Unsubscribe) error {
	ack := &packet.Unsuback{PacketID: p.PacketID}
	for _, f := range p.Filters {
		found := c.s.unsubscribe(c.clientID, f)
		c.sess.mu.Lock()
		delete(c.sess.subs, f)
		c.sess.mu.Unlock()
		if c.version == packet.V5 {
			code := packet.Success
			if !found {
				code = packet.NoSubscriptionExisted
			}
			ack.ReasonCodes = append(ack.ReasonCodes, code)
		}
	}
	if err := c.s.saveSession(c.sess, false, true); err != nil {
		return &closeError{code: packet.UnspecifiedError, msg: "storing the session: " + err.Error()}
	}
	return c.send(ack)
}

// onDisconnect handles the client's DISCONNECT: the will is deleted unless
// v5 reason 0x04 asks for it [MQTT-3.14.4-3]; v5 may change the session
// expiry, but not from 0 [MQTT-3.14.2-2].
func (c *conn) onDisconnect(p *packet.Disconnect) error {
	if c.version == packet.V5 {
		if p.Properties.Has(packet.PropSessionExpiryInterval) {
			if c.connExpiry == 0 && p.Properties.SessionExpiryInterval != 0 {
				return &closeError{code: packet.ProtocolError, msg: "session expiry set in DISCONNECT after 0 in CONNECT"}
			}
			c.sess.setExpiry(expiryDuration(p.Properties.SessionExpiryInterval, c.s.opts.MaxSessionExpiry))
		}
		if p.ReasonCode == packet.DisconnectWithWillMessage {
			return errors.New("mqtt: disconnect with will message")
		}
	}
	return nil
}

// startWriter starts writeLoop once.
func (c *conn) startWriter(present bool) {
	if c.writerStarted.CompareAndSwap(false, true) {
		c.s.wg.Add(1)
		c.sess.wake() // the first pass takes what is queued already
		go c.writeLoop(present)
	}
}

// writeLoop sends the session's messages: first the inflight ones of a
// resumed session (PUBLISH with DUP, or PUBREL), then the queue as it
// fills, keeping at most inflightMax QoS 1/2 messages unacknowledged.
func (c *conn) writeLoop(present bool) {
	defer c.s.wg.Done()
	defer close(c.writerDone)
	if present {
		c.wmu.Lock()
		var err error
		for _, d := range c.sess.resend() {
			if d.released {
				err = c.writeLocked(&packet.Pubrel{PacketID: d.id})
			} else {
				err = c.writePublishLocked(d, true)
			}
			if err != nil {
				break
			}
		}
		if err == nil {
			err = c.flushLocked()
		}
		c.wmu.Unlock()
		if err != nil {
			c.stop()
			return
		}
	}
	var batch []*delivery
	for {
		select {
		case <-c.sess.notify:
		case <-c.closing:
			return
		}
		for {
			var expired int
			batch, expired = c.sess.take(c, c.inflightMax, 256, time.Now(), batch[:0])
			if expired > 0 {
				c.s.m.dropped.WithLabelValues(dropExpired).Add(float64(expired))
			}
			if len(batch) == 0 {
				break
			}
			if err := c.persistOutbound(batch); err != nil {
				c.s.log.Warn("mqtt delivery stopped", "client_id", c.clientID, "err", err)
				c.stop()
				return
			}
			c.wmu.Lock()
			var err error
			for _, d := range batch {
				if err = c.writePublishLocked(d, false); err != nil {
					break
				}
			}
			if err == nil {
				err = c.flushLocked()
			}
			c.wmu.Unlock()
			if err != nil {
				c.stop()
				return
			}
		}
	}
}

// writePublishLocked encodes one delivery. A message over the client's
// Maximum Packet Size, or expired, is dropped rather than sent.
func (c *conn) writePublishLocked(d *delivery, dup bool) error {
	m := d.msg
	c.outPub = packet.Publish{Topic: m.Topic, QoS: packet.QoS(d.qos), Retain: d.retain, PacketID: d.id,
		Payload: m.Payload, Dup: dup && d.qos > 0}
	pk := &c.outPub
	if c.version == packet.V5 {
		pp := &pk.Properties
		pp.PayloadFormatIndicator = m.PayloadFormat
		pp.ContentType = m.ContentType
		pp.ResponseTopic = m.ResponseTopic
		pp.CorrelationData = m.CorrelationData
		pp.SubscriptionIdentifiers = d.subIDs
		if !m.Expiry.IsZero() {
			left := time.Until(m.Expiry)
			if left <= 0 {
				c.drop(d, dropExpired)
				return nil
			}
			pp.MessageExpiryInterval = uint32((left + time.Second - 1) / time.Second)
		}
		if len(m.Headers) > 0 {
			pp.UserProperties = make([]packet.UserProperty, len(m.Headers))
			for i, h := range m.Headers {
				pp.UserProperties[i] = packet.UserProperty{Key: h.Key, Value: h.Value}
			}
		}
	}
	var alias uint16
	var known bool
	if c.outAliases != nil {
		alias, known = c.outAliases.lookup(m.Topic)
		pk.Properties.TopicAlias = alias
		if known {
			pk.Topic = ""
		}
	}
	err := c.writeLocked(pk)
	if errors.Is(err, packet.ErrPeerPacketTooLarge) {
		c.drop(d, dropTooLarge) // nothing written: the alias is not the client's yet
		return nil
	}
	if err == nil {
		if alias != 0 && !known {
			c.outAliases.assign(m.Topic, alias)
		}
		c.s.m.delivered.Inc()
	}
	return err
}

func (c *conn) drop(d *delivery, reason string) {
	c.s.m.dropped.WithLabelValues(reason).Inc()
	if d.qos > 0 {
		c.completed(c.sess.acked(d.id, d.released))
	}
}

// grow returns (*b)[:n] zeroed, growing *b when needed.
func grow[T any](b *[]T, n int) []T {
	if cap(*b) < n {
		*b = make([]T, n)
	}
	s := (*b)[:n]
	clear(s)
	return s
}

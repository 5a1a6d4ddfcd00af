package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// Options configure a Client.
type Options struct {
	// Addr is the broker's TCP address, HOST:PORT. Required.
	Addr string
	// ClientID is sent in CONNECT. Required (the benchmark names every
	// client, so that no broker has to assign one).
	ClientID string
	// Version is the protocol version; default packet.V311.
	Version packet.Version
	// KeepAlive in seconds; 0 asks for none. The client sends PINGREQ
	// every KeepAlive/2 seconds when it is non-zero.
	KeepAlive uint16
	// MaxInflight bounds the QoS 1 PUBLISHes awaiting PUBACK; Publish
	// blocks while it is reached. Default 1024, lowered to the broker's
	// Receive Maximum (v5).
	MaxInflight int
	// OnPublish is called on the read goroutine for every PUBLISH
	// received, before its PUBACK is queued. p and p.Payload are valid
	// only during the call.
	OnPublish func(p *packet.Publish)
	// OnPuback is called on the read goroutine for every PUBACK received.
	OnPuback func(id uint16, code packet.ReasonCode)
	// ReadBufferSize is the reader's initial buffer; default 4096. Idle
	// clients use a small one.
	ReadBufferSize int
	// DialTimeout bounds the TCP dial and the CONNECT/CONNACK exchange;
	// default 10 s.
	DialTimeout time.Duration
}

// DefaultMaxInflight is Options.MaxInflight's default.
const DefaultMaxInflight = 1024

// ErrClosed is returned by calls on a closed Client, and by Wait after the
// connection ended with no other error.
var ErrClosed = errors.New("client: closed")

// Client is one MQTT connection. Publish and Flush may be called from one
// goroutine at a time; Subscribe before publishing starts; Close from any.
type Client struct {
	opts Options
	nc   net.Conn
	r    *packet.Reader

	wmu  sync.Mutex // guards w and acks
	w    *packet.Writer
	acks []uint16 // PUBACKs to send
	kick chan struct{}

	imu      sync.Mutex
	inUse    []bool // by packet id
	inflight int
	nextID   uint16
	space    chan struct{} // signalled when a QoS 1 slot frees up
	pend     map[uint16]chan packet.ReasonCode

	done    chan struct{} // closed when the read loop ends
	errOnce sync.Once
	err     error
	closed  chan struct{}
	cOnce   sync.Once
	pub     packet.Publish // reused by Publish
}

// Dial connects to the broker, sends CONNECT (clean start) and waits for a
// successful CONNACK.
func Dial(ctx context.Context, opts Options) (*Client, error) {
	if opts.Addr == "" || opts.ClientID == "" {
		return nil, errors.New("client: Options.Addr and Options.ClientID are required")
	}
	if opts.Version == 0 {
		opts.Version = packet.V311
	}
	if !opts.Version.Valid() {
		return nil, fmt.Errorf("client: unknown protocol version %d", opts.Version)
	}
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = DefaultMaxInflight
	}
	opts.MaxInflight = min(opts.MaxInflight, 65535)
	if opts.ReadBufferSize <= 0 {
		opts.ReadBufferSize = packet.DefaultBufferSize
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("client %s: %w", opts.ClientID, err)
	}
	c := &Client{opts: opts, nc: nc,
		r:     packet.NewReaderSize(nc, 0, opts.ReadBufferSize),
		w:     packet.NewWriter(nc, opts.Version),
		kick:  make(chan struct{}, 1),
		space: make(chan struct{}, 1),
		pend:  map[uint16]chan packet.ReasonCode{},
		done:  make(chan struct{}), closed: make(chan struct{})}
	c.r.SetVersion(opts.Version)
	if err := c.handshake(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("client %s: %w", opts.ClientID, err)
	}
	go c.readLoop()
	go c.writeLoop()
	return c, nil
}

func (c *Client) handshake(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetDeadline(dl)
		defer c.nc.SetDeadline(time.Time{})
	}
	conn := &packet.Connect{Version: c.opts.Version, CleanStart: true, KeepAlive: c.opts.KeepAlive, ClientID: c.opts.ClientID}
	if c.opts.Version == packet.V5 {
		conn.Properties.ReceiveMaximum = 65535
	}
	if err := c.w.WritePacket(conn); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	p, err := c.r.ReadPacket()
	if err != nil {
		return fmt.Errorf("waiting for CONNACK: %w", err)
	}
	ack, ok := p.(*packet.Connack)
	if !ok {
		return fmt.Errorf("got %v, want CONNACK", p.Type())
	}
	if ack.ReasonCode.IsError() || ack.ReturnCode != 0 {
		return fmt.Errorf("connection refused: reason %v, return code %v", ack.ReasonCode, ack.ReturnCode)
	}
	if ack.Properties.Has(packet.PropReceiveMaximum) && int(ack.Properties.ReceiveMaximum) < c.opts.MaxInflight {
		c.opts.MaxInflight = int(ack.Properties.ReceiveMaximum)
	}
	return nil
}

// fail records the first error and closes the connection.
func (c *Client) fail(err error) {
	c.errOnce.Do(func() { c.err = err })
	c.nc.Close()
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		p, err := c.r.ReadPacket()
		if err != nil {
			select {
			case <-c.closed:
				c.fail(ErrClosed)
			default:
				if errors.Is(err, io.EOF) {
					err = errors.New("broker closed the connection")
				}
				c.fail(err)
			}
			c.imu.Lock()
			for _, ch := range c.pend {
				close(ch)
			}
			c.pend = map[uint16]chan packet.ReasonCode{}
			c.imu.Unlock()
			return
		}
		switch p := p.(type) {
		case *packet.Publish:
			if c.opts.OnPublish != nil {
				c.opts.OnPublish(p)
			}
			if p.QoS == 1 {
				c.wmu.Lock()
				c.acks = append(c.acks, p.PacketID)
				c.wmu.Unlock()
				select {
				case c.kick <- struct{}{}:
				default:
				}
			} else if p.QoS == 2 {
				c.fail(errors.New("QoS 2 PUBLISH received: the benchmark client speaks QoS 0 and 1 only"))
			}
		case *packet.Puback:
			c.release(p.PacketID, p.ReasonCode)
		case *packet.Suback:
			c.release(p.PacketID, firstCode(p.ReasonCodes))
		case *packet.Pingresp:
		case *packet.Disconnect:
			c.fail(fmt.Errorf("broker sent DISCONNECT %v", p.ReasonCode))
		default:
			c.fail(fmt.Errorf("unexpected %v from the broker", p.Type()))
		}
	}
}

func firstCode(codes []packet.ReasonCode) packet.ReasonCode {
	if len(codes) == 0 {
		return packet.ReasonCode(0x80)
	}
	return codes[0]
}

// release frees a packet id on PUBACK or SUBACK.
func (c *Client) release(id uint16, code packet.ReasonCode) {
	c.imu.Lock()
	if c.inUse == nil || !c.inUse[id] {
		c.imu.Unlock()
		c.fail(fmt.Errorf("acknowledgement for packet id %d, which is not in flight", id))
		return
	}
	c.inUse[id] = false
	c.inflight--
	ch := c.pend[id]
	delete(c.pend, id)
	c.imu.Unlock()
	select {
	case c.space <- struct{}{}:
	default:
	}
	if ch != nil {
		ch <- code
		return
	}
	if c.opts.OnPuback != nil {
		c.opts.OnPuback(id, code)
	}
}

// writeLoop sends the PUBACKs the read loop queued, many per write under
// load, and PINGREQs for keep alive.
func (c *Client) writeLoop() {
	var ping <-chan time.Time
	if c.opts.KeepAlive > 0 {
		t := time.NewTicker(time.Duration(c.opts.KeepAlive) * time.Second / 2)
		defer t.Stop()
		ping = t.C
	}
	var ack packet.Puback
	for {
		select {
		case <-c.done:
			return
		case <-ping:
			if c.write(writeAndFlush(&packet.Pingreq{})) != nil {
				return
			}
		case <-c.kick:
			err := c.write(func(w *packet.Writer) error {
				defer func() { c.acks = c.acks[:0] }()
				for _, id := range c.acks {
					ack.PacketID = id
					if err := w.WritePacket(&ack); err != nil {
						return err
					}
				}
				return w.Flush()
			})
			if err != nil {
				return
			}
		}
	}
}

// acquire takes a free packet id, waiting while MaxInflight are in flight.
func (c *Client) acquire(ctx context.Context, reply chan packet.ReasonCode) (uint16, error) {
	for {
		c.imu.Lock()
		if c.inUse == nil {
			c.inUse = make([]bool, 65536) // on first use: idle clients need none
		}
		if c.inflight < c.opts.MaxInflight {
			for {
				c.nextID++
				if c.nextID != 0 && !c.inUse[c.nextID] {
					break
				}
			}
			id := c.nextID
			c.inUse[id] = true
			c.inflight++
			if reply != nil {
				c.pend[id] = reply
			}
			c.imu.Unlock()
			return id, nil
		}
		c.imu.Unlock()
		// The window is full: send what is buffered so that acks come.
		if err := c.Flush(); err != nil {
			return 0, err
		}
		select {
		case <-c.space:
		case <-c.done:
			return 0, c.Err()
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Subscribe subscribes to filter with maximum QoS qos and waits for a
// SUBACK granting it.
func (c *Client) Subscribe(ctx context.Context, filter string, qos packet.QoS) error {
	reply := make(chan packet.ReasonCode, 1)
	id, err := c.acquire(ctx, reply)
	if err != nil {
		return err
	}
	sub := &packet.Subscribe{PacketID: id, Subscriptions: []packet.Subscription{{Filter: filter, QoS: qos}}}
	if err := c.write(writeAndFlush(sub)); err != nil {
		return err
	}
	select {
	case code, ok := <-reply:
		if !ok {
			return c.Err()
		}
		if code.IsError() || packet.QoS(code) != qos {
			return fmt.Errorf("client %s: subscribe %q at QoS %d: granted %v", c.opts.ClientID, filter, qos, code)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Publish buffers a PUBLISH (it is written on Flush, or once the buffer
// holds 4 KiB). QoS 1 takes a packet id, waiting while MaxInflight are
// unacknowledged; OnPuback reports the acknowledgement.
func (c *Client) Publish(ctx context.Context, topic string, qos packet.QoS, payload []byte) error {
	var id uint16
	if qos > 0 {
		var err error
		if id, err = c.acquire(ctx, nil); err != nil {
			return err
		}
	}
	return c.write(func(w *packet.Writer) error {
		c.pub = packet.Publish{QoS: qos, Topic: topic, PacketID: id, Payload: payload}
		return w.WritePacket(&c.pub)
	})
}

// Flush writes the buffered packets.
func (c *Client) Flush() error {
	return c.write((*packet.Writer).Flush)
}

// write runs f on the writer under its lock; an error ends the connection.
func (c *Client) write(f func(*packet.Writer) error) error {
	c.wmu.Lock()
	err := f(c.w)
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
	}
	return err
}

// writeAndFlush writes p and flushes.
func writeAndFlush(p packet.Packet) func(*packet.Writer) error {
	return func(w *packet.Writer) error {
		if err := w.WritePacket(p); err != nil {
			return err
		}
		return w.Flush()
	}
}

// Inflight is the number of QoS 1 PUBLISHes awaiting PUBACK.
func (c *Client) Inflight() int {
	c.imu.Lock()
	defer c.imu.Unlock()
	return c.inflight
}

// Err is the error that ended the connection, nil while it is up.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close sends DISCONNECT, closes the connection and waits for the read
// loop to end.
func (c *Client) Close() error {
	c.cOnce.Do(func() {
		close(c.closed)
		c.wmu.Lock()
		writeAndFlush(&packet.Disconnect{})(c.w)
		c.wmu.Unlock()
		c.nc.Close()
	})
	<-c.done
	return nil
}

package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// metaCookieStore is a bookie.CookieStore in the meta service, under
// schema.CookieKey(bookie id). Unlike a file in data_dir it survives the
// loss of the whole data_dir when the node rejoins a cluster whose meta
// survived, so a wiped bookie cannot silently rejoin (it forgot its fences).
type metaCookieStore struct {
	kv      func() meta.KV // the running meta server
	timeout time.Duration  // per call: CookieStore has no context
}

var _ bookie.CookieStore = (*metaCookieStore)(nil)

func (s *metaCookieStore) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.timeout)
}

// ReadCookie implements bookie.CookieStore (a linearizable read).
func (s *metaCookieStore) ReadCookie(bookieID string) (bookie.Cookie, bool, error) {
	kv := s.kv()
	if kv == nil {
		return bookie.Cookie{}, false, errors.New("bookie cookie store: meta is not running")
	}
	ctx, cancel := s.ctx()
	defer cancel()
	var r schema.Record[bookie.Cookie]
	err := schema.RetryNotLeader(ctx, func() error {
		var err error
		r, err = schema.Get[bookie.Cookie](ctx, kv, schema.CookieKey(bookieID))
		return err
	})
	switch {
	case errors.Is(err, meta.ErrNotFound):
		return bookie.Cookie{}, false, nil
	case err != nil:
		return bookie.Cookie{}, false, fmt.Errorf("bookie cookie store: reading %s from meta: %w", schema.CookieKey(bookieID), err)
	}
	return r.Value, true, nil
}

// WriteCookie implements bookie.CookieStore.
func (s *metaCookieStore) WriteCookie(c bookie.Cookie) error {
	kv := s.kv()
	if kv == nil {
		return errors.New("bookie cookie store: meta is not running")
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if err := schema.RetryNotLeader(ctx, func() error {
		_, err := schema.Put(ctx, kv, schema.CookieKey(c.BookieID), c)
		return err
	}); err != nil {
		return fmt.Errorf("bookie cookie store: writing %s to meta: %w", schema.CookieKey(c.BookieID), err)
	}
	return nil
}

package bookie

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/quiremq/quire/internal/vfs"
)

// cookieFile is the name of the cookie in each of the bookie's directories.
const cookieFile = "COOKIE"

// A Cookie is a bookie's identity. It is written into every directory of
// the bookie and into a CookieStore outside them on first start; on every
// later start all copies must agree. A directory whose cookie is missing
// while the store holds one is a wiped or replaced disk: such a bookie has
// forgotten its fences and must not silently rejoin.
type Cookie struct {
	// BookieID is Options.BookieID.
	BookieID string `json:"bookie_id"`
	// InstanceID is a random UUID drawn when the bookie was first formatted.
	InstanceID string `json:"instance_id"`
	// Dirs are the bookie's directories (journal first, then data).
	Dirs []string `json:"dirs"`
}

func (c Cookie) String() string {
	return fmt.Sprintf("bookie %q instance %s dirs %q", c.BookieID, c.InstanceID, c.Dirs)
}

// mismatch names the first field in which c and want differ, or "".
func (c Cookie) mismatch(want Cookie) string {
	switch {
	case c.BookieID != want.BookieID:
		return fmt.Sprintf("bookie id %q, want %q", c.BookieID, want.BookieID)
	case c.InstanceID != want.InstanceID:
		return fmt.Sprintf("instance id %s, want %s", c.InstanceID, want.InstanceID)
	case !slices.Equal(c.Dirs, want.Dirs):
		return fmt.Sprintf("dirs %q, want %q", c.Dirs, want.Dirs)
	}
	return ""
}

// CookieStore keeps bookies' cookies outside their disks. The meta service
// will implement it; until then FileCookieStore does.
type CookieStore interface {
	// ReadCookie returns the cookie registered for bookieID; ok is false if
	// there is none.
	ReadCookie(bookieID string) (c Cookie, ok bool, err error)
	// WriteCookie registers c under c.BookieID, replacing any previous one.
	WriteCookie(c Cookie) error
}

var (
	_ CookieStore = (*FileCookieStore)(nil)
	_ CookieStore = (*MemCookieStore)(nil)
)

// FileCookieStore is a CookieStore in one JSON file (bookie id → cookie),
// replaced atomically on every write.
type FileCookieStore struct {
	fs   vfs.FS
	path string
	mu   sync.Mutex
}

// NewFileCookieStore returns a store kept in the file path of fs.
func NewFileCookieStore(fs vfs.FS, path string) *FileCookieStore {
	return &FileCookieStore{fs: fs, path: path}
}

func (s *FileCookieStore) load() (map[string]Cookie, error) {
	data, err := vfs.ReadFile(s.fs, s.path)
	if vfs.IsNotExist(err) {
		return map[string]Cookie{}, nil
	}
	if err != nil {
		return nil, err
	}
	m := map[string]Cookie{}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: cookie store %s: %v", ErrCorrupt, s.path, err)
	}
	return m, nil
}

// ReadCookie implements CookieStore.
func (s *FileCookieStore) ReadCookie(bookieID string) (Cookie, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.load()
	if err != nil {
		return Cookie{}, false, err
	}
	c, ok := m[bookieID]
	return c, ok, nil
}

// WriteCookie implements CookieStore.
func (s *FileCookieStore) WriteCookie(c Cookie) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.load()
	if err != nil {
		return err
	}
	m[c.BookieID] = c
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := vfs.MkdirAll(s.fs, s.fs.PathDir(s.path)); err != nil {
		return err
	}
	return vfs.WriteFileAtomic(s.fs, s.path, data)
}

// MemCookieStore is an in-memory CookieStore for tests.
type MemCookieStore struct {
	mu sync.Mutex
	m  map[string]Cookie
}

// ReadCookie implements CookieStore.
func (s *MemCookieStore) ReadCookie(bookieID string) (Cookie, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.m[bookieID]
	return c, ok, nil
}

// WriteCookie implements CookieStore.
func (s *MemCookieStore) WriteCookie(c Cookie) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]Cookie{}
	}
	c.Dirs = slices.Clone(c.Dirs)
	s.m[c.BookieID] = c
	return nil
}

// checkCookies verifies (or, for a brand-new bookie, writes) the cookies of
// o's directories and o.Cookies. hasData reports whether a directory already
// holds bookie files.
func checkCookies(o *Options, hasData func() (bool, error)) (Cookie, error) {
	fs := o.FS
	dirs := []string{o.JournalDir, o.Dir}
	if o.JournalDir == o.Dir {
		dirs = dirs[:1]
	}
	want := Cookie{BookieID: o.BookieID, Dirs: dirs}

	stored, inStore, err := o.Cookies.ReadCookie(o.BookieID)
	if err != nil {
		return Cookie{}, fmt.Errorf("bookie: reading cookie store: %w", err)
	}
	local := make([]*Cookie, len(dirs))
	var first *Cookie
	for i, d := range dirs {
		data, err := vfs.ReadFile(fs, fs.PathJoin(d, cookieFile))
		if vfs.IsNotExist(err) {
			continue
		}
		if err != nil {
			return Cookie{}, fmt.Errorf("bookie: reading cookie of %s: %w", d, err)
		}
		var c Cookie
		if err := json.Unmarshal(data, &c); err != nil {
			return Cookie{}, fmt.Errorf("%w: cookie of %s unreadable: %v", ErrCookieMismatch, d, err)
		}
		local[i] = &c
		if first == nil {
			first = &c
		}
	}

	switch {
	case inStore:
		want.InstanceID = stored.InstanceID
		if m := stored.mismatch(want); m != "" {
			return Cookie{}, fmt.Errorf("%w: the cookie store holds %s: %s (directories changed?)", ErrCookieMismatch, stored, m)
		}
	case first != nil:
		// The directories were formatted but the registration did not
		// complete (or the store was rebuilt): the local cookies are the
		// identity, provided they agree with each other.
		want.InstanceID = first.InstanceID
	default:
		// No cookie anywhere: a brand-new bookie, unless its directories
		// already hold data (then a cookie was lost, and we refuse).
		if data, err := hasData(); err != nil {
			return Cookie{}, err
		} else if data {
			return Cookie{}, fmt.Errorf("%w: directories %q hold bookie data but no cookie, and the cookie store has none for %q", ErrCookieMismatch, dirs, o.BookieID)
		}
		want.InstanceID = newUUID()
	}
	for i, d := range dirs {
		c := local[i]
		if c == nil {
			if inStore || first != nil {
				return Cookie{}, fmt.Errorf("%w: directory %s has no cookie but %s exists: a wiped or replaced disk must not rejoin (remove the registered cookie to reformat this bookie)", ErrCookieMismatch, d, want)
			}
			continue
		}
		if m := c.mismatch(want); m != "" {
			return Cookie{}, fmt.Errorf("%w: cookie of directory %s: %s", ErrCookieMismatch, d, m)
		}
	}
	if first == nil {
		data, _ := json.MarshalIndent(want, "", "  ")
		for _, d := range dirs {
			if err := vfs.WriteFileAtomic(fs, fs.PathJoin(d, cookieFile), data); err != nil {
				return Cookie{}, fmt.Errorf("bookie: writing cookie of %s: %w", d, err)
			}
		}
	}
	if !inStore {
		if err := o.Cookies.WriteCookie(want); err != nil {
			return Cookie{}, fmt.Errorf("bookie: registering cookie: %w", err)
		}
	}
	return want, nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

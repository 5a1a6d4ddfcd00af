package bookie

import (
	"errors"
	"strings"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

// TestCookies checks the DESIGN.md rule "a cookie per disk so a wiped
// bookie cannot silently rejoin": Open refuses, naming the mismatch.
func TestCookies(t *testing.T) {
	setup := func(t *testing.T) (*vfs.MemFS, CookieStore) {
		fs := vfs.NewMem()
		store := NewFileCookieStore(fs, "/registry/cookies.json")
		b := mustOpen(t, testOptions(fs, store))
		if err := addSync(b, 1, 0, -1, []byte("x"), false); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Fence(1); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		return fs, store
	}
	refuse := func(t *testing.T, o Options, want string) {
		t.Helper()
		b, err := Open(o)
		if err == nil {
			b.Close()
			t.Fatalf("Open succeeded, want a cookie mismatch about %q", want)
		}
		if !errors.Is(err, ErrCookieMismatch) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Open: %v; want ErrCookieMismatch mentioning %q", err, want)
		}
	}

	t.Run("new-then-restart", func(t *testing.T) {
		fs, store := setup(t)
		c, ok, err := store.ReadCookie("bookie-1")
		if err != nil || !ok || c.InstanceID == "" || len(c.Dirs) != 2 {
			t.Fatalf("registered cookie %+v %v %v", c, ok, err)
		}
		for _, d := range []string{"/data", "/journal"} {
			if _, err := fs.Stat(d + "/" + cookieFile); err != nil {
				t.Fatalf("no cookie in %s: %v", d, err)
			}
		}
		b := mustOpen(t, testOptions(fs, store))
		if m := b.cookie.mismatch(c); m != "" {
			t.Fatalf("cookie after restart: %s", m)
		}
		if got, err := b.ReadEntry(1, 0, false); err != nil || string(got) != "x" {
			t.Fatalf("read after restart: %q %v", got, err)
		}
		b.Close()
	})
	t.Run("wiped-data-dir", func(t *testing.T) {
		fs, store := setup(t)
		if err := fs.RemoveAll("/data"); err != nil {
			t.Fatal(err)
		}
		refuse(t, testOptions(fs, store), "directory /data has no cookie")
	})
	t.Run("wiped-journal-dir", func(t *testing.T) {
		fs, store := setup(t)
		if err := fs.RemoveAll("/journal"); err != nil {
			t.Fatal(err)
		}
		refuse(t, testOptions(fs, store), "directory /journal has no cookie")
	})
	t.Run("wiped-everything", func(t *testing.T) {
		fs, store := setup(t)
		fs.RemoveAll("/data")
		fs.RemoveAll("/journal")
		refuse(t, testOptions(fs, store), "has no cookie")
	})
	t.Run("other-instance", func(t *testing.T) {
		fs, store := setup(t)
		c, _, _ := store.ReadCookie("bookie-1")
		c.InstanceID = newUUID()
		store.WriteCookie(c)
		refuse(t, testOptions(fs, store), "instance id")
	})
	t.Run("other-bookie-id", func(t *testing.T) {
		fs, store := setup(t)
		o := testOptions(fs, store)
		o.BookieID = "bookie-2"
		refuse(t, o, "bookie id")
	})
	t.Run("moved-journal-dir", func(t *testing.T) {
		fs, store := setup(t)
		o := testOptions(fs, store)
		o.JournalDir = "/journal2"
		refuse(t, o, "dirs")
	})
	t.Run("data-without-cookie", func(t *testing.T) {
		fs, _ := setup(t)
		fs.Remove("/data/" + cookieFile)
		fs.Remove("/journal/" + cookieFile)
		refuse(t, testOptions(fs, NewFileCookieStore(fs, "/other-registry.json")), "hold bookie data but no cookie")
	})
	t.Run("unregistered-local-cookies", func(t *testing.T) {
		// Formatted, but the registration did not happen (or the store was
		// rebuilt): the local cookies are the identity and get registered.
		fs, _ := setup(t)
		store := &MemCookieStore{}
		b := mustOpen(t, testOptions(fs, store))
		b.Close()
		if _, ok, _ := store.ReadCookie("bookie-1"); !ok {
			t.Fatal("local cookie not registered")
		}
	})
}

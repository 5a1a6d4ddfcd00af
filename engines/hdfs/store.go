package hdfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/colinmarc/hdfs/v2"

	"github.com/quiremq/quire/engines/objstore"
)

// StoreOptions locate the objects in HDFS.
type StoreOptions struct {
	// Namenode is "host:port", or several for HA, comma-separated. Required.
	Namenode string
	// Path is the absolute HDFS directory holding the objects. Required.
	Path string
	// User is the HDFS user; default $HADOOP_USER_NAME, else the OS user.
	User string
}

// Validate checks the options.
func (o *StoreOptions) Validate() error {
	var errs []error
	if o.Namenode == "" {
		errs = append(errs, errors.New("hdfs: Namenode is required"))
	}
	if !path.IsAbs(o.Path) || path.Clean(o.Path) != o.Path {
		errs = append(errs, fmt.Errorf("hdfs: Path must be a clean absolute path, got %q", o.Path))
	}
	return errors.Join(errs...)
}

// Store is an objstore.Store in an HDFS directory.
type Store struct {
	c    *hdfs.Client
	root string
	tmp  string
}

var _ objstore.Store = (*Store)(nil)

// tmpMaxAge is the age after which a temporary file is a crashed writer's.
const tmpMaxAge = time.Hour

// OpenStore connects to the namenode and prepares Path.
func OpenStore(opts StoreOptions) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	user := opts.User
	if user == "" {
		user = os.Getenv("HADOOP_USER_NAME")
	}
	co := hdfs.ClientOptions{Addresses: strings.Split(opts.Namenode, ","), User: user}
	if co.User == "" {
		co.User = currentUser()
	}
	c, err := hdfs.NewClient(co)
	if err != nil {
		return nil, fmt.Errorf("hdfs: connect to namenode %s: %w", opts.Namenode, err)
	}
	s := &Store{c: c, root: opts.Path, tmp: path.Join(opts.Path, ".tmp")}
	if err := c.MkdirAll(s.tmp, 0o755); err != nil {
		c.Close()
		return nil, fmt.Errorf("hdfs: create %s on %s: %w", s.tmp, opts.Namenode, err)
	}
	if infos, err := c.ReadDir(s.tmp); err == nil {
		for _, fi := range infos {
			if time.Since(fi.ModTime()) > tmpMaxAge {
				_ = c.Remove(path.Join(s.tmp, fi.Name()))
			}
		}
	}
	return s, nil
}

func currentUser() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return "root"
}

// Close closes the connection to the namenode.
func (s *Store) Close() error { return s.c.Close() }

func (s *Store) path(key string) (string, error) {
	parts, err := objstore.KeyPath(key)
	if err != nil {
		return "", err
	}
	return path.Join(append([]string{s.root}, parts...)...), nil
}

func tmpName() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Put writes a temporary file and renames it over the object.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	tmp := path.Join(s.tmp, tmpName())
	if err := s.writeTemp(ctx, tmp, r, size); err != nil {
		_ = s.c.Remove(tmp)
		return fmt.Errorf("hdfs: put %q: %w", key, err)
	}
	// A Delete may remove the emptied parent between MkdirAll and Rename:
	// try again then.
	for attempt := 0; ; attempt++ {
		if err = s.c.MkdirAll(path.Dir(p), 0o755); err == nil {
			if err = s.c.Rename(tmp, p); err == nil {
				return nil
			}
		}
		if attempt == 2 || !os.IsNotExist(err) {
			_ = s.c.Remove(tmp)
			return fmt.Errorf("hdfs: put %q: %w", key, err)
		}
	}
}

func (s *Store) writeTemp(ctx context.Context, tmp string, r io.Reader, size int64) error {
	w, err := s.c.Create(tmp)
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = w.SetDeadline(d)
	}
	if n, err := io.CopyN(w, r, size); err != nil {
		w.Close()
		return fmt.Errorf("object body ended after %d of %d bytes: %w", n, size, err)
	}
	// Close completes the file; ErrReplicating means the data is on the
	// datanodes but the namenode has not completed the file yet: retry.
	for i := 0; ; i++ {
		err = w.Close()
		if err == nil || !hdfs.IsErrReplicating(err) || i == 8 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(50<<i) * time.Millisecond):
		}
	}
}

// Get reads a byte range of the object.
func (s *Store) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := s.c.Open(p)
	if os.IsNotExist(err) {
		return nil, &objstore.NotFoundError{Key: key}
	} else if err != nil {
		return nil, fmt.Errorf("hdfs: get %q: %w", key, err)
	}
	defer f.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = f.SetDeadline(d)
	}
	end, err := objstore.CheckRange(key, off, n, f.Stat().Size())
	if err != nil {
		return nil, err
	}
	b := make([]byte, end-off)
	if len(b) == 0 {
		return b, nil
	}
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("hdfs: get %q: %w", key, err)
	}
	return b, nil
}

// List walks the directories that can hold keys under prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]objstore.ObjectInfo, error) {
	out, err := objstore.ListTree(ctx, prefix, s.root, path.Join, func(dir string) ([]objstore.TreeEntry, error) {
		infos, err := s.c.ReadDir(dir)
		if os.IsNotExist(err) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		entries := make([]objstore.TreeEntry, len(infos))
		for i, fi := range infos {
			entries[i] = objstore.TreeEntry{Name: fi.Name(), Size: fi.Size(), ModTime: fi.ModTime()}
		}
		return entries, nil
	})
	if err != nil {
		return nil, fmt.Errorf("hdfs: list %q: %w", prefix, err)
	}
	return out, nil
}

// Delete removes the object and the directories it leaves empty.
func (s *Store) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.c.Remove(p); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("hdfs: delete %q: %w", key, err)
	}
	// Remove is not recursive: it fails on a directory that is not empty.
	for dir := path.Dir(p); dir != s.root && strings.HasPrefix(dir, s.root+"/"); dir = path.Dir(dir) {
		if s.c.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// Stat describes the object.
func (s *Store) Stat(ctx context.Context, key string) (objstore.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return objstore.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return objstore.ObjectInfo{}, err
	}
	fi, err := s.c.Stat(p)
	if os.IsNotExist(err) {
		return objstore.ObjectInfo{}, &objstore.NotFoundError{Key: key}
	} else if err != nil {
		return objstore.ObjectInfo{}, fmt.Errorf("hdfs: stat %q: %w", key, err)
	}
	return objstore.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

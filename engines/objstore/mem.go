package objstore

import (
	"context"
	"hash/crc32"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// Mem is an in-memory Store for tests and for engines that need no
// durability.
type Mem struct {
	mu   sync.RWMutex
	objs map[string]memObject
	now  func() time.Time
}

type memObject struct {
	data []byte
	mod  time.Time
}

var (
	_ Store          = (*Mem)(nil)
	_ ChecksumPutter = (*Mem)(nil)
)

// NewMem returns an empty in-memory store.
func NewMem() *Mem { return &Mem{objs: map[string]memObject{}, now: time.Now} }

// Put stores a copy of the object.
func (m *Mem) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	_, err := m.put(ctx, key, r, size, nil)
	return err
}

// PutCRC32C stores a copy of the object if its CRC-32C is crc.
func (m *Mem) PutCRC32C(ctx context.Context, key string, r io.Reader, size int64, crc uint32) (bool, error) {
	return m.put(ctx, key, r, size, &crc)
}

func (m *Mem) put(ctx context.Context, key string, r io.Reader, size int64, crc *uint32) (bool, error) {
	if err := ValidateKey(key); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	b, err := readFull(r, size)
	if err != nil {
		return false, err
	}
	if crc != nil {
		if got := crc32.Checksum(b, Castagnoli); got != *crc {
			return false, ChecksumError(key, got, *crc)
		}
	}
	m.mu.Lock()
	m.objs[key] = memObject{data: b, mod: m.now()}
	m.mu.Unlock()
	return crc != nil, nil
}

// Get returns a copy of a byte range of the object.
func (m *Mem) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	o, ok := m.objs[key]
	m.mu.RUnlock()
	if !ok {
		return nil, &NotFoundError{Key: key}
	}
	end, err := CheckRange(key, off, n, int64(len(o.data)))
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), o.data[off:end]...), nil
}

// List returns the objects under prefix in key order.
func (m *Mem) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	var out []ObjectInfo
	for k, o := range m.objs {
		if strings.HasPrefix(k, prefix) {
			out = append(out, ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.mod})
		}
	}
	m.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes the object.
func (m *Mem) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.objs, key)
	m.mu.Unlock()
	return nil
}

// Stat describes the object.
func (m *Mem) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	if err := ValidateKey(key); err != nil {
		return ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, err
	}
	m.mu.RLock()
	o, ok := m.objs[key]
	m.mu.RUnlock()
	if !ok {
		return ObjectInfo{}, &NotFoundError{Key: key}
	}
	return ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.mod}, nil
}

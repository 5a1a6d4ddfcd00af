package objstore

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// The tree layout, shared by the directory and HDFS stores: key "a/b" is the
// file a.d/b.o under the store's root. Every byte of a part outside
// [A-Za-z0-9_-] is escaped as %XX, so no key names a directory, escapes the
// root or collides with a store's own files (".tmp").
const (
	dirSuffix = ".d"
	objSuffix = ".o"
	// maxPartLen bounds one escaped key part with its suffix (a file name).
	maxPartLen = 250
)

// KeyPath returns the path of key in the tree layout: its escaped
// directories, outermost first, then its file name.
func KeyPath(key string) ([]string, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	parts := strings.Split(key, "/")
	out := make([]string, len(parts))
	for i, p := range parts {
		suffix := dirSuffix
		if i == len(parts)-1 {
			suffix = objSuffix
		}
		out[i] = escapePart(p) + suffix
		if len(out[i]) > maxPartLen {
			return nil, fmt.Errorf("%w: part %q of %q is too long for a file name once escaped", ErrInvalidKey, p, key)
		}
	}
	return out, nil
}

// escapePart escapes one "/"-separated part of a key.
func escapePart(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// unescapePart reverses escapePart; ok is false for a name escapePart
// cannot produce.
func unescapePart(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		var c byte
		if _, err := fmt.Sscanf(s[i+1:i+3], "%02X", &c); err != nil {
			return "", false
		}
		b.WriteByte(c)
		i += 2
	}
	return b.String(), true
}

// TreeEntry is one entry of a directory in the tree layout. Size and ModTime
// matter for objects (names ending in ".o") only.
type TreeEntry struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// ListTree lists the objects under prefix of a tree rooted at root. readDir
// returns a directory's entries, and nothing (no error) for a directory that
// does not exist; join joins path elements.
func ListTree(ctx context.Context, prefix, root string, join func(...string) string, readDir func(dir string) ([]TreeEntry, error)) ([]ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, keyDir, partial := root, "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		for _, p := range strings.Split(prefix[:i], "/") {
			dir = join(dir, escapePart(p)+dirSuffix)
		}
		keyDir, partial = prefix[:i+1], prefix[i+1:]
	}
	var out []ObjectInfo
	if err := walkTree(ctx, dir, keyDir, partial, join, readDir, &out); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// walkTree adds the objects of dir (whose keys start with keyDir) whose next
// key part starts with partial, recursively.
func walkTree(ctx context.Context, dir, keyDir, partial string, join func(...string) string, readDir func(string) ([]TreeEntry, error), out *[]ObjectInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	entries, err := readDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		var suffix string
		switch {
		case strings.HasSuffix(e.Name, objSuffix):
			suffix = objSuffix
		case strings.HasSuffix(e.Name, dirSuffix):
			suffix = dirSuffix
		default:
			continue // .tmp and foreign files
		}
		part, ok := unescapePart(strings.TrimSuffix(e.Name, suffix))
		if !ok || !strings.HasPrefix(part, partial) {
			continue
		}
		if suffix == dirSuffix {
			if err := walkTree(ctx, join(dir, e.Name), keyDir+part+"/", "", join, readDir, out); err != nil {
				return err
			}
			continue
		}
		*out = append(*out, ObjectInfo{Key: keyDir + part, Size: e.Size, ModTime: e.ModTime})
	}
	return nil
}

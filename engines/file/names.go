package file

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Shard directory names.
//
// A name is stored as "s-" followed by the name's bytes, where bytes other
// than [a-z0-9._-] are written %XX with upper-case hex digits. The encoding
// is bijective (decoding accepts only the canonical form) and safe on
// case-insensitive file systems: upper-case letters appear only inside
// escapes, so two encodings that differ only in case are equal. A name whose
// encoding would exceed maxEncodedName bytes (file systems limit a name to
// 255 bytes; shard names may have 1024) is stored as "h-" followed by the
// hex SHA-256 of the name, and its real name is read from the NAME file that
// every shard directory holds.
const (
	plainPrefix    = "s-"
	hashPrefix     = "h-"
	maxEncodedName = 200
)

const upperHex = "0123456789ABCDEF"

func plainByte(c byte) bool {
	return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
}

// dirName returns the directory name of shard name.
func dirName(name string) string {
	var b strings.Builder
	b.WriteString(plainPrefix)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if plainByte(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('%')
			b.WriteByte(upperHex[c>>4])
			b.WriteByte(upperHex[c&15])
		}
		if b.Len() > maxEncodedName {
			sum := sha256.Sum256([]byte(name))
			return hashPrefix + hex.EncodeToString(sum[:])
		}
	}
	return b.String()
}

// decodeDirName returns the shard name of a plain ("s-") directory name.
// hashed reports an "h-" name, whose shard name must be read from its NAME
// file; ok is false for anything else.
func decodeDirName(dir string) (name string, hashed, ok bool) {
	if strings.HasPrefix(dir, hashPrefix) {
		return "", true, len(dir) == len(hashPrefix)+2*sha256.Size && strings.ToLower(dir) == dir
	}
	if !strings.HasPrefix(dir, plainPrefix) || len(dir) == len(plainPrefix) {
		return "", false, false
	}
	enc := dir[len(plainPrefix):]
	var b strings.Builder
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		switch {
		case plainByte(c):
			b.WriteByte(c)
		case c == '%' && i+2 < len(enc) && unhex(enc[i+1]) >= 0 && unhex(enc[i+2]) >= 0:
			v := byte(unhex(enc[i+1])<<4 | unhex(enc[i+2]))
			if plainByte(v) {
				return "", false, false // not canonical
			}
			b.WriteByte(v)
			i += 2
		default:
			return "", false, false
		}
	}
	name = b.String()
	if dirName(name) != dir {
		return "", false, false
	}
	return name, false, true
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

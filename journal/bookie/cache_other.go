//go:build !linux

package bookie

import "github.com/quiremq/quire/internal/vfs"

// dropCache is advice the kernel cannot be given here: it does nothing.
func dropCache(vfs.File, int64, int64) {}

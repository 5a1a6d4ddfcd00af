package vfs

import (
	"errors"
	"io/fs"

	"github.com/cockroachdb/errors/oserror"
)

func isNotExist(err error) bool {
	return err != nil && (errors.Is(err, fs.ErrNotExist) || oserror.IsNotExist(err))
}

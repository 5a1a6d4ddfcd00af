package hdfs

import (
	"context"

	"github.com/quiremq/quire/engines/s3"
)

// Options configure the hdfs engine.
type Options struct {
	// Namenode, Path and User locate the objects ([storage.hdfs] namenode,
	// path, user); see StoreOptions.
	Namenode string
	Path     string
	User     string
	// Engine holds the engine settings (Meta is required); its Name and
	// Store are set by Open.
	Engine s3.Options
}

// Open connects to HDFS and starts the engine, named "hdfs".
func Open(ctx context.Context, opts Options) (*s3.Engine, error) {
	st, err := OpenStore(StoreOptions{Namenode: opts.Namenode, Path: opts.Path, User: opts.User})
	if err != nil {
		return nil, err
	}
	eo := opts.Engine
	eo.Name, eo.Store, eo.CloseStore = "hdfs", st, true
	e, err := s3.Open(ctx, eo)
	if err != nil {
		st.Close()
		return nil, err
	}
	return e, nil
}

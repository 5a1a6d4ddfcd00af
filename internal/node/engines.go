package node

import (
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/file"
	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// This file is the only place that knows the concrete engines. Adding an
// engine means opening it here, listing it in config.Engines, and (if its
// shards do not survive a restart) in ephemeralEngines.

// ephemeralEngines are the engines whose shards are gone after a restart.
var ephemeralEngines = map[string]bool{"memory": true}

// fileEngineDir is where the file engine keeps its shards, under data_dir.
const fileEngineDir = "file"

// openEngines opens every engine this build has, configured from cfg, with
// their data under dataDir on fs.
func openEngines(cfg *config.Config, fs vfs.FS, dataDir string, reg prometheus.Registerer, log *slog.Logger) (map[string]shard.Engine, error) {
	mem := memory.New(memory.Options{
		ShardBudgetBytes: cfg.Storage.Memory.ShardBudgetBytes,
		Registerer:       reg,
	})
	fc := cfg.Storage.File
	segmentAge := fc.SegmentAge.Std()
	if segmentAge == 0 {
		segmentAge = -1 // config: 0 = never roll by age; file engine: negative
	}
	fe, err := file.Open(file.Options{
		FS:             fs,
		Dir:            fs.PathJoin(dataDir, fileEngineDir),
		Sync:           file.SyncPolicy(fc.Sync),
		SyncInterval:   fc.SyncInterval.Std(),
		SegmentBytes:   fc.SegmentBytes,
		SegmentAge:     segmentAge,
		RetentionBytes: fc.RetentionBytes,
		RetentionAge:   fc.RetentionAge.Std(),
		Registerer:     reg,
		Logger:         log.With("engine", "file"),
	})
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("open file engine in %s: %w", fs.PathJoin(dataDir, fileEngineDir), err)
	}
	return map[string]shard.Engine{mem.Name(): mem, fe.Name(): fe}, nil
}

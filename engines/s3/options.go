package s3

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/meta"
)

// Defaults applied by EnsureDefaults.
const (
	DefaultMetaPrefix     = "/engines/s3/"
	DefaultFlushInterval  = 50 * time.Millisecond
	DefaultFlushBytes     = 8 << 20
	DefaultReadCacheBytes = 64 << 20
	DefaultOpTimeout      = 30 * time.Second
	// maxFlushBytes bounds one object (its body length is a u32).
	maxFlushBytes = 1 << 30
)

// Options configure an Engine. The S3 fields are the [storage.s3] section of
// Quire's configuration, one to one: endpoint, bucket, region, access_key,
// secret_key, path_style, tls, prefix, flush_interval, flush_bytes.
type Options struct {
	// Name is the engine's name in configuration; default "s3" (engines/hdfs
	// runs this engine as "hdfs").
	Name string
	// Store holds the objects. When nil, the engine connects to S3 with the
	// fields below (tests and other backends pass a store).
	Store objstore.Store
	// CloseStore makes Close also close Store when it is an io.Closer (for
	// callers that hand the store over, as engines/hdfs does).
	CloseStore bool

	// Endpoint ("host:port" or "http(s)://host:port"), Bucket, Region,
	// AccessKey, SecretKey, PathStyle and TLS are passed to s3store.Options
	// (empty keys: the environment / shared credentials chain).
	Endpoint  string
	Bucket    string
	Region    string
	AccessKey string
	SecretKey string
	PathStyle bool
	TLS       bool
	// Prefix is prepended to every object key (for example "quire/"), so
	// several clusters or engines can share a bucket.
	Prefix string

	// Meta is the metadata store that holds the shards and the object index
	// (required). An append is acknowledged once its index entry is
	// committed there.
	Meta meta.KV
	// MetaPrefix is where in Meta this engine keeps its keys; default
	// /engines/s3/. Engines that must not see each other's shards use
	// different prefixes.
	MetaPrefix string

	// FlushInterval is how long the first append waiting for an object
	// waits for others to share it; default 50ms. Negative: no wait (an
	// object takes whatever queued while the previous one was written).
	FlushInterval time.Duration
	// FlushBytes writes an object as soon as this many payload bytes are
	// waiting; it is also the target size of one object. Default 8 MiB.
	FlushBytes int

	// RetentionBytes deletes a shard's oldest objects while the others
	// still hold at least this many bytes; 0 keeps everything.
	RetentionBytes int64
	// RetentionAge deletes the oldest objects whose newest record is older
	// than this; 0 keeps everything. The newest object is always kept.
	// Retention runs in the background soon after an object is written,
	// and once a minute.
	RetentionAge time.Duration

	// ReadCacheBytes bounds the decoded objects kept for readers (shared by
	// all shards); default 64 MiB. Objects just written go in too, so
	// readers tailing the shard do not fetch them back.
	ReadCacheBytes int64
	// OpTimeout bounds each store and meta call; default 30s.
	OpTimeout time.Duration

	// Registerer receives the engine's metrics (quire_s3_*); nil registers
	// nothing.
	Registerer prometheus.Registerer
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Now is the clock for default timestamps and retention; default
	// time.Now.
	Now func() time.Time
}

// EnsureDefaults fills zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Name == "" {
		o.Name = "s3"
	}
	if o.MetaPrefix == "" {
		o.MetaPrefix = DefaultMetaPrefix
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.FlushBytes == 0 {
		o.FlushBytes = DefaultFlushBytes
	}
	if o.ReadCacheBytes == 0 {
		o.ReadCacheBytes = DefaultReadCacheBytes
	}
	if o.OpTimeout == 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate checks the options (call EnsureDefaults first).
func (o *Options) Validate() error {
	var errs []error
	if o.Meta == nil {
		errs = append(errs, errors.New("s3: Meta is required (the object index lives in meta)"))
	}
	if o.Store == nil {
		so := o.storeOptions()
		so.EnsureDefaults()
		if err := so.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if !strings.HasPrefix(o.MetaPrefix, "/") || !strings.HasSuffix(o.MetaPrefix, "/") {
		errs = append(errs, fmt.Errorf("s3: MetaPrefix must start and end with /, got %q", o.MetaPrefix))
	}
	if o.Prefix != "" {
		if err := objstore.ValidateKey(o.Prefix + "x"); err != nil {
			errs = append(errs, fmt.Errorf("s3: Prefix %q: %w", o.Prefix, err))
		}
	}
	if o.FlushBytes <= 0 || o.FlushBytes > maxFlushBytes {
		errs = append(errs, fmt.Errorf("s3: FlushBytes must be in (0, %d], got %d", maxFlushBytes, o.FlushBytes))
	}
	if o.RetentionBytes < 0 || o.RetentionAge < 0 {
		errs = append(errs, errors.New("s3: RetentionBytes and RetentionAge must not be negative"))
	}
	if o.ReadCacheBytes < 0 || o.OpTimeout <= 0 {
		errs = append(errs, errors.New("s3: ReadCacheBytes must not be negative and OpTimeout must be positive"))
	}
	return errors.Join(errs...)
}

func (o *Options) storeOptions() s3store.Options {
	return s3store.Options{
		Endpoint: o.Endpoint, Bucket: o.Bucket, Region: o.Region,
		AccessKey: o.AccessKey, SecretKey: o.SecretKey, PathStyle: o.PathStyle, TLS: o.TLS,
	}
}

package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
)

// BookieOptions configure RunBookie: a bookie alone (`quire bookie`), for
// tests and benchmarks.
type BookieOptions struct {
	// DataDir holds the bookie's cookie, entry logs and index. Required.
	DataDir string
	// JournalDir holds its journal; "" means DataDir/journal.
	JournalDir string
	// Addr is the gRPC listen address (journal.v1.Bookie and
	// grpc.health.v1.Health). Required.
	Addr string
	// MetricsAddr serves Prometheus /metrics (and /healthz, /readyz) over
	// HTTP; "" serves none.
	MetricsAddr string
	// BookieID names the bookie in its cookie; "" means Addr as given.
	BookieID string
	// CookieStore is the file that remembers the cookie outside the
	// bookie's directories; "" means DefaultCookieStore(DataDir).
	CookieStore string
	// Group commit and entry size; zero takes the journal/bookie defaults.
	MaxGroupWait  time.Duration
	MaxGroupBytes int
	MaxEntrySize  int
	// Logger receives the logs; default slog.Default().
	Logger *slog.Logger
	// FS holds the directories; default vfs.Default.
	FS vfs.FS
	// Registry collects the metrics; default metrics.NewRegistry().
	Registry *prometheus.Registry
}

// DefaultCookieStore is where a standalone bookie in dataDir keeps its
// cookie store by default: .quire-cookies.json in dataDir's parent, outside
// the data directory, so that a wiped data directory (or journal
// directory) is caught; a store inside it would be wiped with it. It does
// not catch the parent being wiped too, or the data dir moved elsewhere:
// pass an explicit store on another disk for that, until the Meta service
// keeps cookies. Bookies sharing a parent share the file, keyed by bookie
// id.
func DefaultCookieStore(dataDir string) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(abs), ".quire-cookies.json"), nil
}

// RunBookie runs a standalone bookie until ctx ends, then stops it within
// stopTimeout: it starts the gRPC server (journal.v1.Bookie and health,
// SERVING once the bookie is open), the metrics HTTP server if any, and
// the bookie, and stops them in reverse. It returns nil after a clean stop
// on ctx's end, and the error otherwise (a refused cookie wraps
// bookie.ErrCookieMismatch).
func RunBookie(ctx context.Context, o BookieOptions, stopTimeout time.Duration) error {
	if o.DataDir == "" || o.Addr == "" {
		return errors.New("bookie: a data directory and a gRPC address are required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Registry == nil {
		o.Registry = metrics.NewRegistry()
	}
	if o.BookieID == "" {
		o.BookieID = o.Addr
	}
	dataDir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	jdir := o.JournalDir
	if jdir != "" {
		if jdir, err = filepath.Abs(jdir); err != nil {
			return err
		}
	}
	store := o.CookieStore
	if store == "" {
		store, err = DefaultCookieStore(dataDir)
	} else {
		store, err = filepath.Abs(store)
	}
	if err != nil {
		return err
	}
	log := o.Logger
	fatal := make(chan error, 1)
	report := func(err error) {
		log.Error("server failed", "err", err)
		select {
		case fatal <- err:
		default:
		}
	}
	maxEntry := o.MaxEntrySize
	if maxEntry <= 0 {
		maxEntry = 8 << 20
	}
	g := newGRPCServer(o.Addr, log.With("component", "grpc"), report, grpcServerOptions(maxEntry)...)
	g.label = "--addr"
	bc := newBookieComponent(bookie.Options{
		FS:            o.FS,
		Dir:           dataDir,
		JournalDir:    jdir,
		BookieID:      o.BookieID,
		Cookies:       bookie.NewFileCookieStore(o.FS, store),
		MaxGroupWait:  o.MaxGroupWait,
		MaxGroupBytes: o.MaxGroupBytes,
		MaxEntrySize:  o.MaxEntrySize,
		Registerer:    o.Registry,
		Logf:          func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...)) },
	}, g, log.With("component", "bookie"))
	comps := []Component{g}
	if o.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		comps = append(comps, &adminServer{addr: o.MetricsAddr, label: "--metrics-addr", what: "/metrics /healthz",
			handler: mux, log: log.With("component", "metrics"), report: report})
	}
	comps = append(comps, bc)

	log.Info("starting standalone bookie", "bookie_id", o.BookieID, "data_dir", dataDir, "cookie_store", store)
	stop := func(last int) error {
		sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		var errs []error
		for i := last; i >= 0; i-- {
			if err := comps[i].Stop(sctx); err != nil {
				errs = append(errs, fmt.Errorf("stop %s: %w", comps[i].Name(), err))
			}
		}
		return errors.Join(errs...)
	}
	for i, c := range comps {
		if err := c.Start(ctx); err != nil {
			return errors.Join(fmt.Errorf("start %s: %w", c.Name(), err), stop(i))
		}
	}
	g.setServing("", true)
	log.Info("bookie ready", "grpc", g.Addr().String(), "metrics", o.MetricsAddr)

	var cause error
	select {
	case <-ctx.Done():
		log.Info("shutdown requested", "cause", context.Cause(ctx))
	case cause = <-fatal:
	}
	g.setServing("", false)
	err = stop(len(comps) - 1)
	if cause != nil {
		return errors.Join(cause, err)
	}
	if err == nil {
		log.Info("bookie stopped")
	}
	return err
}

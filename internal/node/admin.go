package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/internal/node/topics"
)

// topicService is what the admin API needs of the topic registry.
type topicService interface {
	Create(ctx context.Context, name, engine string, partitions int) (topics.Info, error)
	Delete(ctx context.Context, name string) error
	List(ctx context.Context) ([]topics.Info, error)
	Get(ctx context.Context, name string) (topics.Info, error)
}

var _ topicService = (*topics.Registry)(nil)

// adminDeps is what the admin handler reads from the node.
type adminDeps struct {
	readiness func() adminapi.Readiness
	cluster   func() adminapi.Cluster
	// topics returns the topic service, or nil while the broker is not
	// running.
	topics func() topicService
	// ledgers lists the journal ledgers (ledgers.go).
	ledgers  func(ctx context.Context, underReplicated bool) (adminapi.LedgerList, error)
	gatherer prometheus.Gatherer
	reg      prometheus.Registerer
	log      *slog.Logger
	pprof    bool // serve /debug/pprof/ (config admin.pprof)
}

// maxBody bounds request bodies of the admin API.
const maxBody = 1 << 20

// newAdminHandler returns the admin HTTP API (see package adminapi for the
// endpoints).
func newAdminHandler(d adminDeps) http.Handler {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metrics.Namespace, Subsystem: "admin", Name: "http_requests_total",
		Help: "Admin HTTP requests by route and status code.",
	}, []string{"path", "code"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metrics.Namespace, Subsystem: "admin", Name: "http_request_duration_seconds",
		Help: "Admin HTTP request latency by route.", Buckets: metrics.LatencyBuckets,
	}, []string{"path"})
	metrics.Register(d.reg, requests, latency)

	mux := http.NewServeMux()
	h := &adminHandler{d: d}
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelError)}))
	mux.HandleFunc("GET /api/v1/cluster", h.cluster)
	mux.HandleFunc("GET /api/v1/topics", h.listTopics)
	mux.HandleFunc("POST /api/v1/topics", h.createTopic)
	mux.HandleFunc("GET /api/v1/topics/{name...}", h.getTopic)
	mux.HandleFunc("DELETE /api/v1/topics/{name...}", h.deleteTopic)
	mux.HandleFunc("GET /api/v1/ledgers", h.listLedgers)
	if d.pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index) // and the named profiles: heap, goroutine, ...
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s (see GET /api/v1/cluster, /api/v1/topics, /healthz, /readyz, /metrics)", r.Method, r.URL.Path))
	})

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		mux.ServeHTTP(rec, r)
		path := r.Pattern
		if path == "" || path == "/" {
			path = "other"
		}
		requests.WithLabelValues(path, strconv.Itoa(rec.code)).Inc()
		latency.WithLabelValues(path).Observe(time.Since(start).Seconds())
		if rec.code >= 500 {
			d.log.Warn("admin request failed", "method", r.Method, "path", r.URL.Path, "code", rec.code)
		} else {
			d.log.Debug("admin request", "method", r.Method, "path", r.URL.Path, "code", rec.code)
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

type adminHandler struct{ d adminDeps }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, adminapi.ErrorBody{Error: msg})
}

func (h *adminHandler) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, adminapi.Health{Status: "ok"})
}

func (h *adminHandler) readyz(w http.ResponseWriter, _ *http.Request) {
	rd := h.d.readiness()
	code := http.StatusOK
	if !rd.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rd)
}

func (h *adminHandler) cluster(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, h.d.cluster())
}

func (h *adminHandler) listLedgers(w http.ResponseWriter, r *http.Request) {
	under := false
	if v := r.URL.Query().Get("under_replicated"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("under_replicated=%q: want true or false", v))
			return
		}
		under = b
	}
	l, err := h.d.ledgers(r.Context(), under)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, l)
}

// service returns the topic service, or answers 503.
func (h *adminHandler) service(w http.ResponseWriter) topicService {
	s := h.d.topics()
	if s == nil {
		writeError(w, http.StatusServiceUnavailable, "the broker is not running (the node is starting or stopping); see /readyz")
	}
	return s
}

// topicError answers with the status that err calls for.
func topicError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, topics.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, topics.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, topics.ErrExists):
		code = http.StatusConflict
	}
	writeError(w, code, err.Error())
}

func toAPI(in topics.Info) adminapi.Topic {
	t := adminapi.Topic{Name: in.Name, Engine: in.Engine, Partitions: in.Partitions, CreatedAt: in.CreatedAt, Node: in.Node,
		Shards: make([]adminapi.Partition, len(in.Shards))}
	for i, p := range in.Shards {
		t.Shards[i] = adminapi.Partition(p)
	}
	return t
}

func (h *adminHandler) listTopics(w http.ResponseWriter, r *http.Request) {
	s := h.service(w)
	if s == nil {
		return
	}
	ins, err := s.List(r.Context())
	if err != nil {
		topicError(w, err)
		return
	}
	out := adminapi.TopicList{Topics: make([]adminapi.Topic, len(ins))}
	for i, in := range ins {
		out.Topics[i] = toAPI(in)
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *adminHandler) createTopic(w http.ResponseWriter, r *http.Request) {
	s := h.service(w)
	if s == nil {
		return
	}
	var req adminapi.CreateTopicRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("bad request body: %v; want {\"name\": \"...\", \"engine\": \"...\" (optional), \"partitions\": N (optional)}", err))
		return
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "bad request body: more than one JSON value")
		return
	}
	in, err := s.Create(r.Context(), req.Name, req.Engine, req.Partitions)
	if err != nil {
		topicError(w, err)
		return
	}
	h.d.log.Info("topic created", "topic", in.Name, "engine", in.Engine, "partitions", in.Partitions)
	w.Header().Set("Location", adminapi.TopicPath(in.Name))
	writeJSON(w, http.StatusCreated, toAPI(in))
}

func (h *adminHandler) getTopic(w http.ResponseWriter, r *http.Request) {
	s := h.service(w)
	if s == nil {
		return
	}
	in, err := s.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		topicError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toAPI(in))
}

func (h *adminHandler) deleteTopic(w http.ResponseWriter, r *http.Request) {
	s := h.service(w)
	if s == nil {
		return
	}
	name := r.PathValue("name")
	if err := s.Delete(r.Context(), name); err != nil {
		topicError(w, err)
		return
	}
	h.d.log.Info("topic deleted", "topic", name)
	writeJSON(w, http.StatusOK, adminapi.Deleted{Deleted: name})
}

// adminServer serves the admin handler on [admin] addr.
type adminServer struct {
	addr    string
	label   string // names addr in errors; default "[admin] addr"
	what    string // what it serves, for the log; default the admin endpoints
	handler http.Handler
	log     *slog.Logger
	report  func(error)

	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

func (a *adminServer) Name() string { return "admin" }

func (a *adminServer) Start(context.Context) error {
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		label := a.label
		if label == "" {
			label = "[admin] addr"
		}
		return fmt.Errorf("listen on %s %q: %w", label, a.addr, err)
	}
	a.ln = ln
	a.srv = &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.report(fmt.Errorf("admin server: %w", err))
		}
	}()
	if a.what != "" {
		a.log.Info("HTTP server listening", "addr", ln.Addr().String(), "endpoints", a.what)
	} else {
		a.log.Info("admin HTTP server listening", "addr", ln.Addr().String(), "endpoints", "/healthz /readyz /metrics /api/v1/cluster /api/v1/topics")
	}
	return nil
}

// Addr returns the bound address, nil before Start.
func (a *adminServer) Addr() net.Addr {
	if a.ln == nil {
		return nil
	}
	return a.ln.Addr()
}

func (a *adminServer) Stop(ctx context.Context) error {
	if a.srv == nil {
		return nil
	}
	err := a.srv.Shutdown(ctx)
	if err != nil {
		a.srv.Close()
	}
	<-a.done
	return err
}

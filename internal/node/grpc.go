package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// grpcServer is the inner gRPC server: node-to-node services on [grpc]
// addr. gRPC accepts no service registration once it serves, so services
// are registered when the node is built (register), before Start, and each
// answers UNAVAILABLE until its component runs. The standard health service
// answers for the node ("") NOT_SERVING until the whole node has started,
// SERVING while it runs, and NOT_SERVING again once it starts stopping; each
// registered service has its own health status, SERVING while its
// component runs.
type grpcServer struct {
	addr   string
	label  string // names addr in errors; default "[grpc] addr"
	log    *slog.Logger
	report func(error)

	srv    *grpc.Server
	health *health.Server
	late   *lateServices
	ln     net.Listener
	done   chan struct{}
}

func newGRPCServer(addr string, log *slog.Logger, report func(error), opts ...grpc.ServerOption) *grpcServer {
	g := &grpcServer{addr: addr, log: log, report: report, late: &lateServices{svcs: map[string]*lateService{}}}
	g.srv = grpc.NewServer(append(opts, grpc.UnknownServiceHandler(g.late.handle))...)
	g.health = health.NewServer()
	g.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(g.srv, g.health)
	return g
}

// stopGrace bounds a graceful stop of the inner gRPC server.
const stopGrace = 5 * time.Second

// register adds a service. Only before Start.
func (g *grpcServer) register(desc *grpc.ServiceDesc, impl any) {
	g.srv.RegisterService(desc, impl)
	g.health.SetServingStatus(desc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
}

// reserve declares a service that a component registers only once it runs
// (through lateServices: its implementation is built by Start, after the
// server serves, as meta.Server is). Until then, and after detach, its
// methods answer UNAVAILABLE. Only before Start.
func (g *grpcServer) reserve(service string) {
	g.late.mu.Lock()
	g.late.svcs[service] = nil
	g.late.mu.Unlock()
	g.health.SetServingStatus(service, healthpb.HealthCheckResponse_NOT_SERVING)
}

func (g *grpcServer) Name() string { return "grpc" }

// lateServices serves services registered after the gRPC server started:
// gRPC refuses RegisterService once it serves, so the server's
// UnknownServiceHandler dispatches calls of these services to the
// implementation registered now (RegisterService, a grpc.ServiceRegistrar)
// through the generated ServiceDesc handlers, exactly as gRPC would.
type lateServices struct {
	mu   sync.RWMutex
	svcs map[string]*lateService // reserved names; nil while not attached
}

type lateService struct {
	impl    any
	unary   map[string]grpc.MethodDesc
	streams map[string]grpc.StreamDesc
}

var _ grpc.ServiceRegistrar = (*lateServices)(nil)

// RegisterService attaches impl to a reserved service.
func (l *lateServices) RegisterService(desc *grpc.ServiceDesc, impl any) {
	ls := &lateService{impl: impl, unary: map[string]grpc.MethodDesc{}, streams: map[string]grpc.StreamDesc{}}
	for _, m := range desc.Methods {
		ls.unary[m.MethodName] = m
	}
	for _, s := range desc.Streams {
		ls.streams[s.StreamName] = s
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.svcs[desc.ServiceName]; !ok {
		panic(fmt.Sprintf("node: late gRPC service %s was not reserved", desc.ServiceName))
	}
	l.svcs[desc.ServiceName] = ls
}

// detach makes the services answer UNAVAILABLE again.
func (l *lateServices) detach(services ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range services {
		if _, ok := l.svcs[s]; ok {
			l.svcs[s] = nil
		}
	}
}

func (l *lateServices) handle(_ any, stream grpc.ServerStream) error {
	full, ok := grpc.MethodFromServerStream(stream)
	if !ok {
		return status.Error(codes.Internal, "no method name in the stream")
	}
	svc, method, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	l.mu.RLock()
	ls, reserved := l.svcs[svc]
	l.mu.RUnlock()
	switch {
	case !reserved:
		return status.Errorf(codes.Unimplemented, "unknown service %s", svc)
	case ls == nil:
		return status.Errorf(codes.Unavailable, "%s is not running on this node (starting or stopping)", svc)
	}
	if md, ok := ls.unary[method]; ok {
		resp, err := md.Handler(ls.impl, stream.Context(), stream.RecvMsg, nil)
		if err != nil {
			return err
		}
		return stream.SendMsg(resp)
	}
	if sd, ok := ls.streams[method]; ok {
		return sd.Handler(ls.impl, stream)
	}
	return status.Errorf(codes.Unimplemented, "unknown method %s of service %s", method, svc)
}

func (g *grpcServer) Start(context.Context) error {
	ln, err := net.Listen("tcp", g.addr)
	if err != nil {
		label := g.label
		if label == "" {
			label = "[grpc] addr"
		}
		return fmt.Errorf("listen on %s %q: %w", label, g.addr, err)
	}
	g.ln = ln
	g.done = make(chan struct{})
	go func() {
		defer close(g.done)
		if err := g.srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			g.report(fmt.Errorf("grpc server: %w", err))
		}
	}()
	g.log.Info("inner gRPC server listening", "addr", ln.Addr().String())
	return nil
}

// setServing sets the health status of service ("" for the whole node).
func (g *grpcServer) setServing(service string, ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	g.health.SetServingStatus(service, st)
}

// Addr returns the bound address, nil before Start.
func (g *grpcServer) Addr() net.Addr {
	if g.ln == nil {
		return nil
	}
	return g.ln.Addr()
}

func (g *grpcServer) Stop(ctx context.Context) error {
	g.health.Shutdown()
	if g.ln == nil {
		g.srv.Stop()
		return nil
	}
	stopped := make(chan struct{})
	go func() { g.srv.GracefulStop(); close(stopped) }()
	// RPCs in flight get stopGrace (or until ctx ends) to finish; long
	// streams from other nodes (Raft, watches) are then cut.
	grace := time.NewTimer(stopGrace)
	defer grace.Stop()
	select {
	case <-stopped:
	case <-ctx.Done():
		g.srv.Stop()
		<-stopped
	case <-grace.C:
		g.log.Warn("gRPC calls still running after the stop grace period; closing them", "grace", stopGrace)
		g.srv.Stop()
		<-stopped
	}
	<-g.done
	return nil
}

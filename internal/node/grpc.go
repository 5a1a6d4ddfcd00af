package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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
	ln     net.Listener
	done   chan struct{}
}

func newGRPCServer(addr string, log *slog.Logger, report func(error), opts ...grpc.ServerOption) *grpcServer {
	g := &grpcServer{addr: addr, log: log, report: report}
	g.srv = grpc.NewServer(opts...)
	g.health = health.NewServer()
	g.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(g.srv, g.health)
	return g
}

// register adds a service. Only before Start.
func (g *grpcServer) register(desc *grpc.ServiceDesc, impl any) {
	g.srv.RegisterService(desc, impl)
	g.health.SetServingStatus(desc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
}

func (g *grpcServer) Name() string { return "grpc" }

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
	select {
	case <-stopped:
	case <-ctx.Done():
		g.srv.Stop()
		<-stopped
	}
	<-g.done
	return nil
}

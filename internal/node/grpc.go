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

// grpcServer is the inner gRPC server: node-to-node services (none yet but
// health) on [grpc] addr. The standard health service answers NOT_SERVING
// until the whole node has started, SERVING while it runs, and NOT_SERVING
// again once it starts stopping.
type grpcServer struct {
	addr   string
	log    *slog.Logger
	report func(error)

	ln     net.Listener
	srv    *grpc.Server
	health *health.Server
	done   chan struct{}
}

func newGRPCServer(addr string, log *slog.Logger, report func(error)) *grpcServer {
	return &grpcServer{addr: addr, log: log, report: report}
}

func (g *grpcServer) Name() string { return "grpc" }

func (g *grpcServer) Start(context.Context) error {
	ln, err := net.Listen("tcp", g.addr)
	if err != nil {
		return fmt.Errorf("listen on [grpc] addr %q: %w", g.addr, err)
	}
	g.ln = ln
	g.srv = grpc.NewServer()
	g.health = health.NewServer()
	g.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(g.srv, g.health)
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

// setServing sets the node-wide ("") health status.
func (g *grpcServer) setServing(ok bool) {
	if g.health == nil {
		return
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	g.health.SetServingStatus("", st)
}

// Addr returns the bound address, nil before Start.
func (g *grpcServer) Addr() net.Addr {
	if g.ln == nil {
		return nil
	}
	return g.ln.Addr()
}

func (g *grpcServer) Stop(ctx context.Context) error {
	if g.srv == nil {
		return nil
	}
	g.health.Shutdown()
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

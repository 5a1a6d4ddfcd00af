package meta

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// grpcService serves meta.v1.Meta from a Server. A request carrying the
// metadata key quire-meta-no-forward (a forwarded request, or one from
// Client) is never forwarded: a node that is not the leader answers
// NOT_LEADER with the leader's address and the caller retries there.
type grpcService struct {
	metav1.UnimplementedMetaServer
	s *Server
}

var _ metav1.MetaServer = (*grpcService)(nil)

func mayForward(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(noForwardKey)) == 0
}

func (g *grpcService) Get(ctx context.Context, req *metav1.GetRequest) (*metav1.GetResponse, error) {
	resp, err := g.s.doGet(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) List(ctx context.Context, req *metav1.ListRequest) (*metav1.ListResponse, error) {
	resp, err := g.s.doList(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) Put(ctx context.Context, req *metav1.PutRequest) (*metav1.PutResponse, error) {
	resp, err := g.s.doPut(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) Delete(ctx context.Context, req *metav1.DeleteRequest) (*metav1.DeleteResponse, error) {
	resp, err := g.s.doDelete(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) LeaseGrant(ctx context.Context, req *metav1.LeaseGrantRequest) (*metav1.LeaseGrantResponse, error) {
	resp, err := g.s.doLeaseGrant(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) LeaseKeepAlive(ctx context.Context, req *metav1.LeaseKeepAliveRequest) (*metav1.LeaseKeepAliveResponse, error) {
	resp, err := g.s.doLeaseKeepAlive(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) LeaseRevoke(ctx context.Context, req *metav1.LeaseRevokeRequest) (*metav1.LeaseRevokeResponse, error) {
	resp, err := g.s.doLeaseRevoke(ctx, req, mayForward(ctx))
	return resp, toStatus(err)
}

func (g *grpcService) Status(context.Context, *metav1.StatusRequest) (*metav1.StatusResponse, error) {
	return g.s.Status(), nil
}

func (g *grpcService) Watch(req *metav1.WatchRequest, st grpc.ServerStreamingServer[metav1.WatchResponse]) error {
	s := g.s
	if !s.started.Load() || s.stopped.Load() {
		return toStatus(ErrStopped)
	}
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	go func() {
		select {
		case <-s.stopCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := watchLoop(ctx, s.fsm.hist, req.Prefix, req.StartRevision, func(evs []*metav1.Event, upto uint64) error {
		return st.Send(&metav1.WatchResponse{Events: evs, Revision: upto})
	})
	if s.stopped.Load() {
		err = ErrStopped
	}
	return toStatus(err)
}

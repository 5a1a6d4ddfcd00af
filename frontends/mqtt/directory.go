package mqtt

// Session takeover across the nodes of a cluster (issue #6). A session is
// owned by one node; which one is a low-rate fact that the cluster keeps
// (internal/node keeps it in meta), while the session's state stays on the
// node. A CONNECT accepted here for a client id that another node owns
// claims the session first (SessionDirectory.Claim, called by attach): the
// old owner closes the client's connection exactly as a local takeover
// does (v5: DISCONNECT 0x8E Session taken over) and ends its copy of the
// session (ReleaseSession), so that it stops queuing messages for it. A
// node that was down meanwhile drops, at Start, the restored sessions that
// another node owns now (SessionDirectory.Foreign). The state itself does
// not follow the session (yet): the new node starts it empty and answers
// Session Present 0 unless it holds the session itself.

import (
	"context"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// SessionDirectory tells which node of a cluster owns each MQTT session.
// Its methods must be safe for concurrent use.
type SessionDirectory interface {
	// Claim makes this node the owner of clientID's session before a new
	// connection binds to it, and has the previous owner release it
	// (ReleaseSession there), returning once it did or could not (a node
	// that is down, or does not answer in time). cleanStart is the new
	// connection's. An error is logged and the connection goes on.
	Claim(ctx context.Context, clientID string, cleanStart bool) error
	// Foreign returns those of clientIDs (the sessions restored at Start)
	// that another node owns.
	Foreign(ctx context.Context, clientIDs []string) ([]string, error)
}

// claimTimeout bounds a claim when the CONNECT's own deadline is later.
const claimTimeout = 5 * time.Second

// claim runs Options.Sessions.Claim for a CONNECT (attach).
func (s *Server) claim(ctx context.Context, clientID string, cleanStart bool) {
	d := s.opts.Sessions
	if d == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	if err := d.Claim(ctx, clientID, cleanStart); err != nil {
		s.log.Warn("mqtt session claim failed; the connection goes on", "client_id", clientID, "err", err)
	}
}

// ReleaseSession gives clientID's session up to another node that took it
// over: its connection, if any, is closed as a local takeover closes it
// (v5: DISCONNECT 0x8E; a will without delay is published), then the
// session ends here (its stored record is deleted, its messages dropped).
// A delayed will still pending is dropped when the session goes on
// elsewhere (!cleanStart: the new connection suppresses it, MQTT 5.0
// §3.1.2.5) and published otherwise, as a local takeover does. It reports
// whether this server held the session.
func (s *Server) ReleaseSession(ctx context.Context, clientID string, cleanStart bool) (bool, error) {
	for {
		s.mu.Lock()
		sess := s.sessions[clientID]
		if sess == nil || s.stopped {
			s.mu.Unlock()
			return false, nil
		}
		if oc := sess.owner(); oc != nil {
			s.mu.Unlock()
			s.m.takeovers.Inc()
			s.log.Info("mqtt session taken over by another node", "client_id", clientID, "old_remote", oc.remote)
			oc.kick(packet.SessionTakenOver)
			select {
			case <-oc.done:
			case <-ctx.Done():
				return false, ctx.Err()
			}
			continue
		}
		if !cleanStart {
			sess.dropWill()
		}
		s.endSessionLocked(sess)
		s.mu.Unlock()
		return true, nil
	}
}

// dropForeign ends, at Start, the restored sessions that another node took
// over while this one was down. Their pending wills are dropped: the owner
// has the session now.
func (s *Server) dropForeign(ctx context.Context) {
	d := s.opts.Sessions
	if d == nil {
		return
	}
	s.mu.Lock()
	ids := make([]string, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	foreign, err := d.Foreign(ctx, ids)
	if err != nil {
		s.log.Warn("mqtt: cannot tell which restored sessions other nodes own; keeping them", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range foreign {
		if sess := s.sessions[id]; sess != nil && sess.owner() == nil {
			s.log.Info("mqtt restored session dropped: another node owns it", "client_id", id)
			sess.dropWill()
			s.endSessionLocked(sess)
		}
	}
}

// dropWill cancels a delayed will still pending.
func (s *session) dropWill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.willTimer != nil {
		s.willTimer.Stop()
		s.willTimer = nil
	}
	s.will, s.willDue = nil, time.Time{}
}

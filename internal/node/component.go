package node

import (
	"context"
	"sync"
	"time"
)

// Component is one part of a node with a lifecycle. The node starts its
// components in order (common servers, meta, journal, broker) and stops them
// in reverse. Start returns once the component serves; Stop releases
// everything Start acquired, and gives up when ctx ends.
type Component interface {
	Name() string
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// State is where a component is in its lifecycle.
type State string

// Component states.
const (
	StatePending  State = "pending" // not started yet
	StateStarting State = "starting"
	StateRunning  State = "running"
	StateStopping State = "stopping"
	StateStopped  State = "stopped"
	StateFailed   State = "failed" // Start or Stop failed, or it died
)

var allStates = []State{StatePending, StateStarting, StateRunning, StateStopping, StateStopped, StateFailed}

// slot tracks one component's state.
type slot struct {
	c Component

	mu      sync.Mutex
	state   State
	err     error
	started time.Duration // how long Start took
}

func (s *slot) set(st State, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state, s.err = st, err
}

func (s *slot) get() (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.err
}

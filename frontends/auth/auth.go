package auth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Client is what a front-end knows about a connecting client.
type Client struct {
	ID          string // client id
	Username    string
	Password    []byte
	HasPassword bool
	Listener    string // the listener's name: "tcp", "tls", "ws", ...
	Peer        string // the remote address
	CommonName  string // the verified client certificate's subject CN, if any
}

// Result is an authenticator's verdict.
type Result int

// Verdicts. Ignore passes the decision to the next step of a Chain.
const (
	Ignore Result = iota
	Allow
	Deny
)

func (r Result) String() string {
	switch r {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return "ignore"
}

// Authenticator decides whether a client may connect.
type Authenticator interface {
	Authenticate(ctx context.Context, c *Client) (Result, error)
}

// Errors returned by Chain.Authenticate. Front-ends map them to their
// protocol's reason codes (MQTT 5: 0x86, 0x87 and 0x88).
var (
	// ErrBadCredentials: the user name or password is wrong.
	ErrBadCredentials = errors.New("auth: bad user name or password")
	// ErrNotAuthorized: the client is not allowed to connect (anonymous
	// clients when anonymous access is off, or a hook said deny).
	ErrNotAuthorized = errors.New("auth: not authorized")
	// ErrUnavailable: an authenticator could not decide (the HTTP hook
	// failed); the client is refused.
	ErrUnavailable = errors.New("auth: authentication service unavailable")
)

// Chain runs authenticators in order (see the package doc).
type Chain struct {
	Steps          []Authenticator
	AllowAnonymous bool
	// Observe, if set, is told every decision: "allow", "deny" or
	// "error", for metrics.
	Observe func(result string)
}

// Authenticate returns nil if c may connect, or an error wrapping
// ErrBadCredentials, ErrNotAuthorized or ErrUnavailable.
func (ch *Chain) Authenticate(ctx context.Context, c *Client) error {
	err := ch.decide(ctx, c)
	if ch.Observe != nil {
		switch {
		case err == nil:
			ch.Observe("allow")
		case errors.Is(err, ErrUnavailable):
			ch.Observe("error")
		default:
			ch.Observe("deny")
		}
	}
	return err
}

func (ch *Chain) decide(ctx context.Context, c *Client) error {
	if len(ch.Steps) == 0 {
		if ch.AllowAnonymous {
			return nil
		}
		return fmt.Errorf("%w: no authentication is configured and anonymous access is off", ErrNotAuthorized)
	}
	for _, s := range ch.Steps {
		r, err := s.Authenticate(ctx, c)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		switch r {
		case Allow:
			return nil
		case Deny:
			if c.Username == "" {
				return fmt.Errorf("%w: client %q", ErrNotAuthorized, c.ID)
			}
			return fmt.Errorf("%w: user %q", ErrBadCredentials, c.Username)
		}
	}
	if c.Username == "" {
		if ch.AllowAnonymous {
			return nil
		}
		return fmt.Errorf("%w: anonymous access is off", ErrNotAuthorized)
	}
	return fmt.Errorf("%w: unknown user %q", ErrBadCredentials, c.Username)
}

// Users authenticates against a table of user names and bcrypt hashes.
type Users struct {
	hashes   map[string][]byte
	key      [32]byte // keys the cache's password digests
	ttl      time.Duration
	maxCache int

	mu    sync.Mutex
	cache map[string]cached // by user name
}

type cached struct {
	digest [32]byte
	until  time.Time
}

// UsersOptions configures NewUsers.
type UsersOptions struct {
	// CacheTTL is how long a successful check is remembered (default 5
	// minutes; negative: never).
	CacheTTL time.Duration
	// MaxCached bounds the remembered checks (default 100,000).
	MaxCached int
}

// NewUsers returns a Users for hashes (user name → bcrypt hash, as made by
// `htpasswd -B` or `quirectl passwd`). A hash that is not bcrypt is an
// error naming the user.
func NewUsers(hashes map[string]string, o UsersOptions) (*Users, error) {
	u := &Users{hashes: map[string][]byte{}, ttl: o.CacheTTL, maxCache: o.MaxCached, cache: map[string]cached{}}
	if u.ttl == 0 {
		u.ttl = 5 * time.Minute
	}
	if u.maxCache <= 0 {
		u.maxCache = 100_000
	}
	if _, err := rand.Read(u.key[:]); err != nil {
		return nil, err
	}
	for name, h := range hashes {
		if name == "" {
			return nil, errors.New("auth: a user with an empty name")
		}
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return nil, fmt.Errorf("auth: user %q: the password hash is not bcrypt ($2a$/$2b$/$2y$…): %w", name, err)
		}
		u.hashes[name] = []byte(h)
	}
	return u, nil
}

// HashPassword returns the bcrypt hash of password at the default cost,
// for the config file.
func HashPassword(password []byte) (string, error) {
	h, err := bcrypt.GenerateFromPassword(password, bcrypt.DefaultCost)
	return string(h), err
}

// Authenticate implements Authenticator: Ignore for a user it does not know,
// Allow or Deny for one it does.
func (u *Users) Authenticate(_ context.Context, c *Client) (Result, error) {
	h, ok := u.hashes[c.Username]
	if !ok || c.Username == "" {
		return Ignore, nil
	}
	if !c.HasPassword {
		return Deny, nil
	}
	mac := hmac.New(sha256.New, u.key[:])
	mac.Write([]byte(c.Username))
	mac.Write([]byte{0})
	mac.Write(c.Password)
	var d [32]byte
	mac.Sum(d[:0])
	now := time.Now()
	if u.ttl > 0 {
		u.mu.Lock()
		e, hit := u.cache[c.Username]
		u.mu.Unlock()
		if hit && now.Before(e.until) && hmac.Equal(e.digest[:], d[:]) {
			return Allow, nil
		}
	}
	if bcrypt.CompareHashAndPassword(h, c.Password) != nil {
		return Deny, nil
	}
	if u.ttl > 0 {
		u.mu.Lock()
		if len(u.cache) >= u.maxCache {
			for k, e := range u.cache { // drop expired entries, else any one
				if now.After(e.until) || len(u.cache) >= u.maxCache {
					delete(u.cache, k)
				}
			}
		}
		u.cache[c.Username] = cached{digest: d, until: now.Add(u.ttl)}
		u.mu.Unlock()
	}
	return Allow, nil
}

// HTTPHook asks an HTTP service (see the package doc for the protocol).
type HTTPHook struct {
	URL     string
	Timeout time.Duration // per request; default 5 s
	Client  *http.Client  // default http.DefaultClient
}

type hookRequest struct {
	ClientID   string `json:"clientid"`
	Username   string `json:"username"`
	Password   string `json:"password"`
	Listener   string `json:"listener"`
	Peer       string `json:"peer"`
	CommonName string `json:"common_name,omitempty"`
}

// Authenticate implements Authenticator.
func (h *HTTPHook) Authenticate(ctx context.Context, c *Client) (Result, error) {
	body, err := json.Marshal(hookRequest{ClientID: c.ID, Username: c.Username, Password: string(c.Password),
		Listener: c.Listener, Peer: c.Peer, CommonName: c.CommonName})
	if err != nil {
		return Ignore, err
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return Ignore, fmt.Errorf("auth hook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	hc := h.Client
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Ignore, fmt.Errorf("auth hook %s: %w", h.URL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return Ignore, fmt.Errorf("auth hook %s: reading the answer: %w", h.URL, err)
	}
	switch resp.StatusCode {
	case http.StatusNoContent:
		return Allow, nil
	case http.StatusUnauthorized, http.StatusForbidden:
		return Deny, nil
	case http.StatusOK:
	default:
		return Ignore, fmt.Errorf("auth hook %s: unexpected status %s", h.URL, resp.Status)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return Allow, nil
	}
	var ans struct {
		Result string `json:"result"`
	}
	if err := json.Unmarshal(data, &ans); err != nil {
		return Ignore, fmt.Errorf("auth hook %s: the answer is not JSON {\"result\": ...}: %w", h.URL, err)
	}
	switch strings.ToLower(ans.Result) {
	case "allow":
		return Allow, nil
	case "deny":
		return Deny, nil
	case "ignore":
		return Ignore, nil
	}
	return Ignore, fmt.Errorf("auth hook %s: unknown result %q (want allow, deny or ignore)", h.URL, ans.Result)
}

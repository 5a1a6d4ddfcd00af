package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func mustUsers(t *testing.T, users map[string]string) *Users {
	t.Helper()
	hashes := map[string]string{}
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		hashes[u] = string(h)
	}
	us, err := NewUsers(hashes, UsersOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return us
}

func TestUsersAndChain(t *testing.T) {
	us := mustUsers(t, map[string]string{"alice": "s3cret"})
	ctx := context.Background()
	cl := func(user, pass string, hasPass bool) *Client {
		return &Client{ID: "c1", Username: user, Password: []byte(pass), HasPassword: hasPass}
	}
	for _, tc := range []struct {
		name   string
		anon   bool
		client *Client
		want   error
	}{
		{"good password", false, cl("alice", "s3cret", true), nil},
		{"wrong password", true, cl("alice", "nope", true), ErrBadCredentials},
		{"no password", true, cl("alice", "", false), ErrBadCredentials},
		{"unknown user", true, cl("bob", "s3cret", true), ErrBadCredentials},
		{"anonymous allowed", true, cl("", "", false), nil},
		{"anonymous refused", false, cl("", "", false), ErrNotAuthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := &Chain{Steps: []Authenticator{us}, AllowAnonymous: tc.anon}
			// Twice: the second check may come from the cache and must
			// give the same answer.
			for range 2 {
				if err := ch.Authenticate(ctx, tc.client); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
			}
		})
	}
	// A cached success does not let a wrong password in.
	ch := &Chain{Steps: []Authenticator{us}}
	if err := ch.Authenticate(ctx, cl("alice", "s3cret", true)); err != nil {
		t.Fatal(err)
	}
	if err := ch.Authenticate(ctx, cl("alice", "s3cre", true)); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("wrong password after a cached success: %v", err)
	}
	// An empty chain is an open broker only with anonymous access on.
	if err := (&Chain{AllowAnonymous: true}).Authenticate(ctx, cl("x", "y", true)); err != nil {
		t.Fatal(err)
	}
	if err := (&Chain{}).Authenticate(ctx, cl("x", "y", true)); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("empty chain without anonymous access: %v", err)
	}
	if _, err := NewUsers(map[string]string{"eve": "plaintext"}, UsersOptions{}); err == nil {
		t.Fatal("a plain-text password was accepted as a hash")
	}
	h, err := HashPassword([]byte("pw"))
	if err != nil || bcrypt.CompareHashAndPassword([]byte(h), []byte("pw")) != nil {
		t.Fatalf("HashPassword: %v", err)
	}
}

func TestHTTPHook(t *testing.T) {
	var mu sync.Mutex // the handler of a timed-out request may still run
	var last hookRequest
	answer := func(w http.ResponseWriter, r *http.Request) {}
	setAnswer := func(f func(http.ResponseWriter, *http.Request)) {
		mu.Lock()
		answer = f
		last = hookRequest{}
		mu.Unlock()
	}
	lastReq := func() hookRequest {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&last); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		answer(w, r)
	}))
	defer srv.Close()
	us := mustUsers(t, map[string]string{"alice": "pw"})
	// A timeout long enough for a loaded machine under the race detector;
	// the timeout case sets a short one and a hook that never answers.
	const slowOK = 10 * time.Second
	hook := &HTTPHook{URL: srv.URL}
	ch := &Chain{Steps: []Authenticator{us, hook}}
	ctx := context.Background()
	bob := &Client{ID: "dev-1", Username: "bob", Password: []byte("pw2"), HasPassword: true, Listener: "tls", Peer: "10.0.0.1:5555", CommonName: "dev-1"}
	status := func(code int, body string) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(code)
			w.Write([]byte(body))
		}
	}
	for _, tc := range []struct {
		name    string
		answer  func(http.ResponseWriter, *http.Request)
		want    error
		timeout time.Duration
	}{
		{"allow", status(200, `{"result":"allow"}`), nil, slowOK},
		{"empty 200", status(200, ``), nil, slowOK},
		{"204", status(204, ``), nil, slowOK},
		{"deny", status(200, `{"result":"deny"}`), ErrBadCredentials, slowOK},
		{"ignore", status(200, `{"result":"ignore"}`), ErrBadCredentials, slowOK},
		{"403", status(403, ``), ErrBadCredentials, slowOK},
		{"500", status(500, `oops`), ErrUnavailable, slowOK},
		{"garbage", status(200, `allow`), ErrUnavailable, slowOK},
		{"unknown result", status(200, `{"result":"maybe"}`), ErrUnavailable, slowOK},
		// The hook answers only once the client has given up (or after a
		// minute, so that a broken timeout fails the test, not hangs it).
		{"timeout", func(_ http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(time.Minute):
			}
		}, ErrUnavailable, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setAnswer(tc.answer)
			hook.Timeout = tc.timeout
			err := ch.Authenticate(ctx, bob)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			last := lastReq()
			if last.Username != "bob" || last.Password != "pw2" || last.ClientID != "dev-1" ||
				last.Listener != "tls" || last.Peer != "10.0.0.1:5555" || last.CommonName != "dev-1" {
				t.Fatalf("the hook got %+v", last)
			}
		})
	}
	// Users decides for the users it knows: the hook is not asked.
	setAnswer(status(200, `{"result":"deny"}`))
	if err := ch.Authenticate(ctx, &Client{ID: "c", Username: "alice", Password: []byte("pw"), HasPassword: true}); err != nil {
		t.Fatal(err)
	}
	if lastReq().Username != "" {
		t.Fatal("the hook was asked about a user the table knows")
	}
	// An unreachable hook refuses, never admits.
	down := &Chain{Steps: []Authenticator{&HTTPHook{URL: "http://127.0.0.1:1/auth", Timeout: time.Second}}, AllowAnonymous: true}
	if err := down.Authenticate(ctx, bob); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unreachable hook: %v", err)
	}
}

package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// SCRAM-SHA-256 (RFC 5802, RFC 7677) for MQTT 5 enhanced authentication:
// the password never crosses the wire and the server proves it knows the
// credentials too. The server keeps per user only the salt, the iteration
// count, StoredKey and ServerKey, written as PostgreSQL does:
//
//	SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>
//
// (`quirectl passwd` prints it). Channel binding is not supported: a
// client asking for it ("p=...") is refused; "n" and "y" are accepted.

// SCRAMMethod is the MQTT Authentication Method name.
const SCRAMMethod = "SCRAM-SHA-256"

// DefaultSCRAMIterations is the PBKDF2 iteration count of new credentials
// (RFC 7677 asks for at least 4096).
const DefaultSCRAMIterations = 4096

// SCRAMCredentials are what the server stores for one user.
type SCRAMCredentials struct {
	Salt                 []byte
	Iterations           int
	StoredKey, ServerKey []byte
}

// ErrSCRAM is wrapped by every failed exchange.
var ErrSCRAM = errors.New("auth: SCRAM-SHA-256 authentication failed")

func hmacSHA256(key []byte, msg ...string) []byte {
	m := hmac.New(sha256.New, key)
	for _, s := range msg {
		m.Write([]byte(s))
	}
	return m.Sum(nil)
}

// NewSCRAMCredentials derives credentials for password with a random salt.
func NewSCRAMCredentials(password []byte, iterations int) (SCRAMCredentials, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return SCRAMCredentials{}, err
	}
	return deriveSCRAM(password, salt, iterations)
}

func deriveSCRAM(password, salt []byte, iterations int) (SCRAMCredentials, error) {
	salted, err := pbkdf2.Key(sha256.New, string(password), salt, iterations, sha256.Size)
	if err != nil {
		return SCRAMCredentials{}, err
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return SCRAMCredentials{Salt: salt, Iterations: iterations, StoredKey: stored[:], ServerKey: hmacSHA256(salted, "Server Key")}, nil
}

// String encodes c in the PostgreSQL format.
func (c SCRAMCredentials) String() string {
	b := base64.StdEncoding
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", c.Iterations, b.EncodeToString(c.Salt), b.EncodeToString(c.StoredKey), b.EncodeToString(c.ServerKey))
}

// ParseSCRAMCredentials decodes the PostgreSQL format.
func ParseSCRAMCredentials(s string) (SCRAMCredentials, error) {
	bad := func(why string) (SCRAMCredentials, error) {
		return SCRAMCredentials{}, fmt.Errorf("auth: SCRAM credentials %q: %s (want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)", s, why)
	}
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return bad("no SCRAM-SHA-256$ prefix")
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("no keys")
	}
	it, salt64, ok1 := strings.Cut(params, ":")
	stored64, server64, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return bad("malformed")
	}
	n, err := strconv.Atoi(it)
	if err != nil || n < 1 {
		return bad("bad iteration count")
	}
	var c SCRAMCredentials
	c.Iterations = n
	b := base64.StdEncoding
	if c.Salt, err = b.DecodeString(salt64); err != nil || len(c.Salt) == 0 {
		return bad("bad salt")
	}
	if c.StoredKey, err = b.DecodeString(stored64); err != nil || len(c.StoredKey) != sha256.Size {
		return bad("bad StoredKey")
	}
	if c.ServerKey, err = b.DecodeString(server64); err != nil || len(c.ServerKey) != sha256.Size {
		return bad("bad ServerKey")
	}
	return c, nil
}

// SCRAM authenticates users by SCRAM-SHA-256.
type SCRAM struct {
	users map[string]SCRAMCredentials
	fake  []byte // keys the salts shown for unknown users
}

// NewSCRAM returns a SCRAM for users (user name → encoded credentials).
func NewSCRAM(users map[string]string) (*SCRAM, error) {
	s := &SCRAM{users: map[string]SCRAMCredentials{}, fake: make([]byte, 32)}
	if _, err := rand.Read(s.fake); err != nil {
		return nil, err
	}
	for name, enc := range users {
		c, err := ParseSCRAMCredentials(enc)
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", name, err)
		}
		s.users[name] = c
	}
	return s, nil
}

// SCRAMExchange is one authentication in progress.
type SCRAMExchange struct {
	s                    *SCRAM
	user                 string
	known                bool
	cred                 SCRAMCredentials
	gs2, clientFirstBare string
	serverFirst, nonce   string
}

// Start takes the client-first message and returns the exchange and the
// server-first message. An unknown user gets a plausible challenge (its
// salt derived from the name) and fails at Finish, so the exchange does
// not tell which users exist.
func (s *SCRAM) Start(clientFirst []byte) (*SCRAMExchange, []byte, error) {
	msg := string(clientFirst)
	var gs2 string
	switch {
	case strings.HasPrefix(msg, "n,"), strings.HasPrefix(msg, "y,"):
	default:
		return nil, nil, fmt.Errorf("%w: channel binding is not supported (client-first %.20q)", ErrSCRAM, msg)
	}
	i := strings.Index(msg[2:], ",")
	if i < 0 {
		return nil, nil, fmt.Errorf("%w: malformed client-first message", ErrSCRAM)
	}
	gs2 = msg[:2+i+1]
	bare := msg[len(gs2):]
	attrs := parseSCRAMAttrs(bare)
	user, cnonce := attrs["n"], attrs["r"]
	if user == "" || cnonce == "" || strings.HasPrefix(bare, "m=") {
		return nil, nil, fmt.Errorf("%w: client-first message needs n= and r=", ErrSCRAM)
	}
	user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(user)
	x := &SCRAMExchange{s: s, user: user, gs2: gs2, clientFirstBare: bare}
	x.cred, x.known = s.users[user]
	if !x.known {
		x.cred = SCRAMCredentials{Salt: hmacSHA256(s.fake, user)[:16], Iterations: DefaultSCRAMIterations}
	}
	snonce := make([]byte, 18)
	if _, err := rand.Read(snonce); err != nil {
		return nil, nil, err
	}
	x.nonce = cnonce + base64.RawStdEncoding.EncodeToString(snonce)
	x.serverFirst = fmt.Sprintf("r=%s,s=%s,i=%d", x.nonce, base64.StdEncoding.EncodeToString(x.cred.Salt), x.cred.Iterations)
	return x, []byte(x.serverFirst), nil
}

// User is the user name the exchange authenticates.
func (x *SCRAMExchange) User() string { return x.user }

// Finish checks the client-final message and returns the server-final
// message (the server's proof) on success.
func (x *SCRAMExchange) Finish(clientFinal []byte) ([]byte, error) {
	msg := string(clientFinal)
	i := strings.LastIndex(msg, ",p=")
	if i < 0 {
		return nil, fmt.Errorf("%w: client-final message has no proof", ErrSCRAM)
	}
	withoutProof := msg[:i]
	attrs := parseSCRAMAttrs(withoutProof)
	if attrs["c"] != base64.StdEncoding.EncodeToString([]byte(x.gs2)) {
		return nil, fmt.Errorf("%w: channel binding data does not match", ErrSCRAM)
	}
	if attrs["r"] != x.nonce {
		return nil, fmt.Errorf("%w: nonce does not match", ErrSCRAM)
	}
	proof, err := base64.StdEncoding.DecodeString(msg[i+3:])
	if err != nil || len(proof) != sha256.Size {
		return nil, fmt.Errorf("%w: malformed proof", ErrSCRAM)
	}
	authMsg := x.clientFirstBare + "," + x.serverFirst + "," + withoutProof
	sig := hmacSHA256(x.cred.StoredKey, authMsg)
	clientKey := make([]byte, sha256.Size)
	subtle.XORBytes(clientKey, proof, sig)
	stored := sha256.Sum256(clientKey)
	if !x.known || subtle.ConstantTimeCompare(stored[:], x.cred.StoredKey) != 1 {
		return nil, fmt.Errorf("%w: user %q: wrong password or unknown user", ErrSCRAM, x.user)
	}
	return []byte("v=" + base64.StdEncoding.EncodeToString(hmacSHA256(x.cred.ServerKey, authMsg))), nil
}

func parseSCRAMAttrs(s string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Split(s, ",") {
		if len(f) >= 2 && f[1] == '=' {
			m[f[:1]] = f[2:]
		}
	}
	return m
}

// SCRAMClient is the client side, for tests and tools.
type SCRAMClient struct {
	User, Password string
	nonce, bare    string
	authMsg        string
	saltedPassword []byte
}

// First returns the client-first message.
func (c *SCRAMClient) First() []byte {
	n := make([]byte, 18)
	rand.Read(n)
	c.nonce = base64.RawStdEncoding.EncodeToString(n)
	c.bare = "n=" + strings.NewReplacer("=", "=3D", ",", "=2C").Replace(c.User) + ",r=" + c.nonce
	return []byte("n,," + c.bare)
}

// Final answers the server-first message with the client-final message.
func (c *SCRAMClient) Final(serverFirst []byte) ([]byte, error) {
	a := parseSCRAMAttrs(string(serverFirst))
	salt, err := base64.StdEncoding.DecodeString(a["s"])
	it, ierr := strconv.Atoi(a["i"])
	if err != nil || ierr != nil || !strings.HasPrefix(a["r"], c.nonce) {
		return nil, fmt.Errorf("%w: bad server-first message %q", ErrSCRAM, serverFirst)
	}
	c.saltedPassword, err = pbkdf2.Key(sha256.New, c.Password, salt, it, sha256.Size)
	if err != nil {
		return nil, err
	}
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte("n,,")) + ",r=" + a["r"]
	c.authMsg = c.bare + "," + string(serverFirst) + "," + withoutProof
	clientKey := hmacSHA256(c.saltedPassword, "Client Key")
	stored := sha256.Sum256(clientKey)
	proof := make([]byte, sha256.Size)
	subtle.XORBytes(proof, clientKey, hmacSHA256(stored[:], c.authMsg))
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// Verify checks the server-final message: the server knew the credentials.
func (c *SCRAMClient) Verify(serverFinal []byte) error {
	want := "v=" + base64.StdEncoding.EncodeToString(hmacSHA256(hmacSHA256(c.saltedPassword, "Server Key"), c.authMsg))
	if !bytes.Equal(serverFinal, []byte(want)) {
		return fmt.Errorf("%w: the server's signature does not match", ErrSCRAM)
	}
	return nil
}

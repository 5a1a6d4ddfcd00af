package auth

import (
	"errors"
	"testing"
)

func TestSCRAM(t *testing.T) {
	cred, err := NewSCRAMCredentials([]byte("pencil"), DefaultSCRAMIterations)
	if err != nil {
		t.Fatal(err)
	}
	enc := cred.String()
	back, err := ParseSCRAMCredentials(enc)
	if err != nil || back.String() != enc {
		t.Fatalf("round trip: %v %v", back, err)
	}
	s, err := NewSCRAM(map[string]string{"user,1": enc})
	if err != nil {
		t.Fatal(err)
	}
	run := func(user, pass string) error {
		c := &SCRAMClient{User: user, Password: pass}
		x, first, err := s.Start(c.First())
		if err != nil {
			return err
		}
		final, err := c.Final(first)
		if err != nil {
			return err
		}
		sf, err := x.Finish(final)
		if err != nil {
			return err
		}
		if x.User() != user {
			t.Fatalf("authenticated %q, want %q", x.User(), user)
		}
		return c.Verify(sf)
	}
	if err := run("user,1", "pencil"); err != nil {
		t.Fatalf("right password: %v", err)
	}
	if err := run("user,1", "pen"); !errors.Is(err, ErrSCRAM) {
		t.Fatalf("wrong password: %v", err)
	}
	if err := run("nobody", "pencil"); !errors.Is(err, ErrSCRAM) {
		t.Fatalf("unknown user: %v", err)
	}
	// The RFC 7677 test vector: user "user", password "pencil".
	salt := []byte{0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81} // "W22ZaJ0SNY7soEsUEjb6gQ=="
	v, err := deriveSCRAM([]byte("pencil"), salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	rfc := &SCRAM{users: map[string]SCRAMCredentials{"user": v}, fake: make([]byte, 32)}
	x, _, err := rfc.Start([]byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"))
	if err != nil {
		t.Fatal(err)
	}
	// Replay the RFC's server nonce so its proof applies.
	x.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	x.serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	sf, err := x.Finish([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if err != nil {
		t.Fatalf("RFC 7677 proof: %v", err)
	}
	if string(sf) != "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=" {
		t.Fatalf("RFC 7677 server signature %s", sf)
	}
	for _, bad := range []string{"p=tls-unique,,n=user,r=x", "n,,r=x", "garbage"} {
		if _, _, err := s.Start([]byte(bad)); !errors.Is(err, ErrSCRAM) {
			t.Errorf("client-first %q: %v", bad, err)
		}
	}
	if _, err := ParseSCRAMCredentials("SCRAM-SHA-256$x:y$z"); err == nil {
		t.Error("bad credentials parsed")
	}
}

package testcert

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
)

// The files load as a key pair, and the pool verifies the certificate as
// a server certificate for 127.0.0.1 with the given common name.
func TestWrite(t *testing.T) {
	certFile, keyFile, pool := Write(t, "quire-testcert")
	cert := load(t, certFile, keyFile)
	if cert.Subject.CommonName != "quire-testcert" {
		t.Errorf("common name %q", cert.Subject.CommonName)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: x509.NewCertPool(), DNSName: "127.0.0.1"}); err == nil {
		t.Fatal("verified without the pool")
	}
}

// A certificate the authority issued verifies as a client certificate
// against its pool and not against another authority's.
func TestIssue(t *testing.T) {
	a := NewAuthority(t, "test-ca")
	certFile, keyFile := a.Issue(t, "device-1")
	cert := load(t, certFile, keyFile)
	if cert.Subject.CommonName != "device-1" || cert.IsCA {
		t.Errorf("common name %q, CA %v", cert.Subject.CommonName, cert.IsCA)
	}
	client := x509.VerifyOptions{Roots: a.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := cert.Verify(client); err != nil {
		t.Fatal(err)
	}
	client.Roots = NewAuthority(t, "other-ca").Pool
	if _, err := cert.Verify(client); err == nil {
		t.Fatal("verified by another authority")
	}
}

// load loads a key pair and returns its certificate.
func load(t *testing.T, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

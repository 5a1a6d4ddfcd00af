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
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
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

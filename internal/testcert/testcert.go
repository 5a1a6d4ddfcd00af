// Package testcert makes TLS certificates for tests: a self-signed
// authority that also serves 127.0.0.1 and localhost, and client
// certificates it signs.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Authority is a self-signed certificate (ECDSA P-256, valid from an hour
// ago to a day from now) for 127.0.0.1 and localhost that is also a CA:
// a server presents it, and it signs client certificates (Issue).
type Authority struct {
	CertFile, KeyFile string // PEM files in a temporary directory of the test
	Cert              *x509.Certificate
	Pool              *x509.CertPool // trusts Cert
	key               *ecdsa.PrivateKey
	dir               string
}

// NewAuthority makes an Authority with common name cn and writes its
// certificate and key as cn.pem and cn-key.pem.
func NewAuthority(t testing.TB, cn string) *Authority {
	t.Helper()
	a := &Authority{dir: t.TempDir()}
	tmpl := template(t, cn)
	tmpl.IPAddresses, tmpl.DNSNames = []net.IP{net.IPv4(127, 0, 0, 1)}, []string{"localhost"}
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage |= x509.KeyUsageCertSign
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	a.CertFile, a.KeyFile, a.Cert, a.key = write(t, a.dir, tmpl, nil, nil)
	a.Pool = x509.NewCertPool()
	a.Pool.AddCert(a.Cert)
	return a
}

// Issue writes a client certificate with common name cn signed by a, and
// its key, as cn.pem and cn-key.pem next to a's files.
func (a *Authority) Issue(t testing.TB, cn string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, _, _ = write(t, a.dir, template(t, cn), a.Cert, a.key)
	return certFile, keyFile
}

// Write makes an Authority with common name cn and returns its two file
// names and a pool that trusts it: a server certificate for tests that
// need no client certificates.
func Write(t testing.TB, cn string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	a := NewAuthority(t, cn)
	return a.CertFile, a.KeyFile, a.Pool
}

// template is a client certificate's template with common name cn.
func template(t testing.TB, cn string) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	return &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}

// write makes a key, signs tmpl with parentKey as parent (self-signed
// when parent is nil) and writes both to dir as <cn>.pem and <cn>-key.pem.
func write(t testing.TB, dir string, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (certFile, keyFile string, cert *x509.Certificate, key *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cn := tmpl.Subject.CommonName
	certFile, keyFile = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+"-key.pem")
	for f, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kder}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert, key
}

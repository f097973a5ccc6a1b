package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI file names inside <data-dir>/pki.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	servingCrtFile = "apiserver.crt"
	servingKeyFile = "apiserver.key"
	adminCrtFile   = "admin.crt"
	adminKeyFile   = "admin.key"
	saKeyFile      = "sa.key"
	saPubFile      = "sa.pub"
)

type pkiPaths struct {
	Dir        string
	CACert     string
	CAKey      string
	ServingCrt string
	ServingKey string
	AdminCrt   string
	AdminKey   string
	SAKey      string
	SAPub      string
}

func newPKIPaths(dataDir string) pkiPaths {
	d := filepath.Join(dataDir, "pki")
	return pkiPaths{
		Dir:        d,
		CACert:     filepath.Join(d, caCertFile),
		CAKey:      filepath.Join(d, caKeyFile),
		ServingCrt: filepath.Join(d, servingCrtFile),
		ServingKey: filepath.Join(d, servingKeyFile),
		AdminCrt:   filepath.Join(d, adminCrtFile),
		AdminKey:   filepath.Join(d, adminKeyFile),
		SAKey:      filepath.Join(d, saKeyFile),
		SAPub:      filepath.Join(d, saPubFile),
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ensurePKI creates the CA, serving cert, admin client cert and the service
// account key pair once per data dir. Existing files are reused as-is, so a
// restart keeps the same identity (and old kubeconfigs keep working).
func ensurePKI(p pkiPaths, extraIPs []net.IP) error {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return err
	}

	var caCert *x509.Certificate
	var caKey crypto.Signer
	if fileExists(p.CACert) && fileExists(p.CAKey) {
		var err error
		caCert, caKey, err = loadCertAndKey(p.CACert, p.CAKey)
		if err != nil {
			return fmt.Errorf("load CA: %w", err)
		}
	} else {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			Subject:               pkix.Name{CommonName: "kpx-test-apiserver-ca"},
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		}
		der, err := signCert(tmpl, tmpl, key.Public(), key)
		if err != nil {
			return err
		}
		caCert, _ = x509.ParseCertificate(der)
		caKey = key
		if err := writeKey(p.CAKey, key); err != nil {
			return err
		}
		if err := writeCert(p.CACert, der); err != nil {
			return err
		}
		// A new CA invalidates any leaf certs that may be lying around.
		for _, f := range []string{p.ServingCrt, p.ServingKey, p.AdminCrt, p.AdminKey} {
			_ = os.Remove(f)
		}
	}

	if !(fileExists(p.ServingCrt) && fileExists(p.ServingKey)) {
		ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
		ips = append(ips, extraIPs...)
		tmpl := &x509.Certificate{
			Subject: pkix.Name{CommonName: "kube-apiserver"},
			DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
				"kubernetes.default.svc.cluster.local"},
			IPAddresses: ips,
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		if err := issueLeaf(tmpl, caCert, caKey, p.ServingCrt, p.ServingKey); err != nil {
			return fmt.Errorf("serving cert: %w", err)
		}
	}

	if !(fileExists(p.AdminCrt) && fileExists(p.AdminKey)) {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}},
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := issueLeaf(tmpl, caCert, caKey, p.AdminCrt, p.AdminKey); err != nil {
			return fmt.Errorf("admin cert: %w", err)
		}
	}

	if !(fileExists(p.SAKey) && fileExists(p.SAPub)) {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return err
		}
		if err := writeKey(p.SAKey, key); err != nil {
			return err
		}
		if err := writeFileAtomic(p.SAPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func issueLeaf(tmpl, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := signCert(tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writeKey(keyPath, key); err != nil {
		return err
	}
	return writeCert(certPath, der)
}

func signCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-1 * time.Hour)
	tmpl.NotAfter = time.Now().Add(10 * 365 * 24 * time.Hour)
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
}

func writeCert(path string, der []byte) error {
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func loadCertAndKey(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	blk, _ := pem.Decode(cb)
	if blk == nil {
		return nil, nil, errors.New("no PEM data in " + certPath)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	kblk, _ := pem.Decode(kb)
	if kblk == nil {
		return nil, nil, errors.New("no PEM data in " + keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("key is not a signer: " + keyPath)
	}
	return cert, signer, nil
}

// writeFileAtomic writes via a temp file + rename so readers never see a
// partially written file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(name)
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		os.Remove(name)
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(name)
		return err
	}
	return os.Rename(name, path)
}

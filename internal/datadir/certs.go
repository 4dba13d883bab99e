package datadir

import (
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Credential files in a data dir (all private: 0600 in a 0700 directory).
const (
	certsDir = "certs"
	// nodeFile holds the node's certificate chain, leaf first, then its
	// key: one file, so a crash never leaves a key that does not match.
	nodeFile = "node.pem"
	rootFile = "ca.crt" // the cluster roots the node trusts
	// AdminFile is the admin client configuration `shoal init` writes.
	AdminFile = "admin.pem"
)

// ErrNoCerts means the data dir holds no node certificate.
var ErrNoCerts = errors.New("no node certificate in data dir")

// SaveCerts writes the node's certificate chain, key and trusted roots.
func SaveCerts(dir string, certPEM, keyPEM, rootsPEM []byte) error {
	d := filepath.Join(dir, certsDir)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	// Roots first: new roots can verify the old certificate, while a new
	// certificate (a CA rotation) may need the new roots.
	if err := WriteFile(filepath.Join(d, rootFile), rootsPEM); err != nil {
		return err
	}
	return WriteFile(filepath.Join(d, nodeFile), append(append([]byte(nil), certPEM...), keyPEM...))
}

// LoadCerts reads what SaveCerts wrote.
func LoadCerts(dir string) (certPEM, keyPEM, rootsPEM []byte, err error) {
	d := filepath.Join(dir, certsDir)
	out := make([][]byte, 2)
	for i, name := range []string{nodeFile, rootFile} {
		out[i], err = os.ReadFile(filepath.Join(d, name))
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, nil, fmt.Errorf("%w %s", ErrNoCerts, dir)
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read %s: %w", filepath.Join(d, name), err)
		}
	}
	for rest := out[0]; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			certPEM = append(certPEM, pem.EncodeToMemory(b)...)
		} else {
			keyPEM = append(keyPEM, pem.EncodeToMemory(b)...)
		}
	}
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, nil, nil, fmt.Errorf("%s holds no certificate or no key", filepath.Join(d, nodeFile))
	}
	return certPEM, keyPEM, out[1], nil
}

// RemoveCerts deletes the node's credentials (a failed join).
func RemoveCerts(dir string) { _ = os.RemoveAll(filepath.Join(dir, certsDir)) }

// WriteFile writes a private file atomically and durably.
func WriteFile(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	return nil
}

// Package sealer encrypts secret values at rest: the managers seal a
// secret's value with the cluster's secrets key (AES-256-GCM) before it
// enters the Raft log, and open it only to hand it to a worker.
//
// The key lives in each manager's data dir (a 0600 file, never in the Raft
// store); a manager that joins receives it in its join response.
package sealer

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// KeySize is the length of a secrets key: AES-256.
const KeySize = 32

// FileName is the key's file inside a manager's data dir.
const FileName = "secrets.key"

// version is the first byte of every sealed value.
const version = 1

// keyIDSize is how many bytes of the key's SHA-256 a sealed value carries,
// so a value sealed under another key is told apart from a corrupt one.
const keyIDSize = 4

// ErrWrongKey means a value was sealed with another key than this one.
var ErrWrongKey = errors.New("sealed with another secrets key than this manager's")

// Key seals and opens secret values. It is safe for concurrent use.
type Key struct {
	aead cipher.AEAD
	id   [keyIDSize]byte
	raw  []byte
}

// New makes a Key from KeySize raw bytes.
func New(raw []byte) (*Key, error) {
	if len(raw) != KeySize {
		return nil, fmt.Errorf("a secrets key is %d bytes, got %d", KeySize, len(raw))
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	k := &Key{aead: aead, raw: append([]byte(nil), raw...)}
	sum := sha256.Sum256(raw)
	copy(k.id[:], sum[:keyIDSize])
	return k, nil
}

// Generate makes a new random key.
func Generate() (*Key, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generate a secrets key: %w", err)
	}
	return New(raw)
}

// Raw returns the key's bytes (to hand it to a joining manager).
func (k *Key) Raw() []byte { return append([]byte(nil), k.raw...) }

// Seal encrypts plaintext for the secret with ID id: the ID is
// authenticated too, so a sealed value cannot be moved to another secret.
// The result is version, key ID, nonce, ciphertext and tag.
func (k *Key) Seal(id string, plaintext []byte) ([]byte, error) {
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal secret %s: %w", id, err)
	}
	out := make([]byte, 0, 1+keyIDSize+len(nonce)+len(plaintext)+k.aead.Overhead())
	out = append(out, version)
	out = append(out, k.id[:]...)
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, plaintext, []byte(id)), nil
}

// Open decrypts what Seal made for the same secret ID.
func (k *Key) Open(id string, sealed []byte) ([]byte, error) {
	head := 1 + keyIDSize + k.aead.NonceSize()
	if len(sealed) < head+k.aead.Overhead() || sealed[0] != version {
		return nil, fmt.Errorf("open secret %s: not a sealed value", id)
	}
	if string(sealed[1:1+keyIDSize]) != string(k.id[:]) {
		return nil, fmt.Errorf("open secret %s: %w", id, ErrWrongKey)
	}
	out, err := k.aead.Open(nil, sealed[1+keyIDSize:head], sealed[head:], []byte(id))
	if err != nil {
		return nil, fmt.Errorf("open secret %s: the sealed value is corrupt or belongs to another secret", id)
	}
	return out, nil
}

// Load reads the key from dir; it returns an error wrapping fs.ErrNotExist
// when there is none.
func Load(dir string) (*Key, error) {
	path := filepath.Join(dir, FileName)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the secrets key: %w", err)
	}
	k, err := New(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Save writes the key to dir with mode 0600, atomically.
func (k *Key) Save(dir string) error {
	path := filepath.Join(dir, FileName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save the secrets key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, FileName+".tmp*")
	if err != nil {
		return fmt.Errorf("save the secrets key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("save the secrets key: %w", err)
	}
	if _, err := tmp.Write(k.raw); err != nil {
		tmp.Close()
		return fmt.Errorf("save the secrets key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save the secrets key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save the secrets key: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save the secrets key: %w", err)
	}
	return nil
}

// Remove deletes the key file from dir (a manager that was demoted or
// removed no longer holds the key).
func Remove(dir string) error {
	err := os.Remove(filepath.Join(dir, FileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

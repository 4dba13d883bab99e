package sealer

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestSealOpen(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("hunter2-very-secret")
	sealed, err := k.Seal("sec1", plain)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, plain) {
		t.Fatal("the sealed value contains the plaintext")
	}
	again, _ := k.Seal("sec1", plain)
	if bytes.Equal(sealed, again) {
		t.Fatal("two seals of one value are identical: the nonce is not random")
	}
	got, err := k.Open("sec1", sealed)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v; want %q", got, err, plain)
	}

	tampered := append([]byte(nil), sealed...)
	tampered[len(tampered)-1] ^= 1
	cases := []struct {
		name    string
		key     *Key
		id      string
		sealed  []byte
		wrongKy bool
	}{
		{"another secret's ID", k, "sec2", sealed, false},
		{"another key", other, "sec1", sealed, true},
		{"tampered", k, "sec1", tampered, false},
		{"truncated", k, "sec1", sealed[:10], false},
		{"empty", k, "sec1", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.key.Open(c.id, c.sealed)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if errors.Is(err, ErrWrongKey) != c.wrongKy {
				t.Fatalf("Open error %v: wrong-key = %v, want %v", err, errors.Is(err, ErrWrongKey), c.wrongKy)
			}
		})
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a dir without a key: %v, want not-exist", err)
	}
	k, _ := Generate()
	if err := k.Save(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	l, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := k.Seal("x", []byte("v"))
	if got, err := l.Open("x", sealed); err != nil || string(got) != "v" {
		t.Fatalf("the loaded key does not open what the saved one sealed: %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Fatal("Load accepted a short key")
	}
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestNewRejectsBadSize(t *testing.T) {
	if _, err := New(make([]byte, 16)); err == nil {
		t.Fatal("New accepted a 16-byte key")
	}
}

// BenchmarkSealOpenMax seals and opens a value of the largest size a
// secret may have (500 KiB).
func BenchmarkSealOpenMax(b *testing.B) {
	k, err := Generate()
	if err != nil {
		b.Fatal(err)
	}
	plain := make([]byte, 500*1024)
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		sealed, err := k.Seal("id", plain)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := k.Open("id", sealed); err != nil {
			b.Fatal(err)
		}
	}
}

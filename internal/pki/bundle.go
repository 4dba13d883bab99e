package pki

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
)

// ClientConfig is what a CLI needs to talk to a cluster from any machine:
// an admin certificate and key, the roots to trust and a manager address.
// It is stored as one PEM file (`shoal cluster client-config`).
type ClientConfig struct {
	// Host is a manager's API address.
	Host string
	// CertPEM is the client's certificate chain, KeyPEM its key.
	CertPEM, KeyPEM []byte
	// RootsPEM are the cluster's roots.
	RootsPEM []byte
}

// The PEM header that tells the parts of a client config apart.
const (
	partHeader = "Shoal-Part"
	hostHeader = "Shoal-Host"
)

// Encode writes the config as PEM.
func (c *ClientConfig) Encode() []byte {
	var buf bytes.Buffer
	add := func(part string, data []byte) {
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				return
			}
			if b.Headers == nil {
				b.Headers = map[string]string{}
			}
			b.Headers[partHeader] = part
			if part == "cert" && c.Host != "" {
				b.Headers[hostHeader] = c.Host
			}
			_ = pem.Encode(&buf, b)
		}
	}
	add("cert", c.CertPEM)
	add("key", c.KeyPEM)
	add("root", c.RootsPEM)
	return buf.Bytes()
}

// ParseClientConfig reads what Encode wrote.
func ParseClientConfig(data []byte) (*ClientConfig, error) {
	c := &ClientConfig{}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		part := b.Headers[partHeader]
		if h := b.Headers[hostHeader]; h != "" {
			c.Host = h
		}
		delete(b.Headers, partHeader)
		delete(b.Headers, hostHeader)
		enc := pem.EncodeToMemory(b)
		switch part {
		case "cert":
			c.CertPEM = append(c.CertPEM, enc...)
		case "key":
			c.KeyPEM = append(c.KeyPEM, enc...)
		case "root":
			c.RootsPEM = append(c.RootsPEM, enc...)
		default:
			return nil, fmt.Errorf("unknown part %q in the client config", part)
		}
	}
	if len(c.CertPEM) == 0 || len(c.KeyPEM) == 0 || len(c.RootsPEM) == 0 {
		return nil, errors.New("not a Shoal client config (it needs a certificate, a key and the cluster's roots); export one with `shoal cluster client-config`")
	}
	return c, nil
}

package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/moby/moby/client"
)

// LoadImage loads an image tarball (as `docker save` writes it) into the
// Engine at host (see NewClient), the node's own Engine by default, and
// returns what the Engine reported ("Loaded image: shoal/hello:v1").
func LoadImage(ctx context.Context, host string, tarball io.Reader) (string, error) {
	cli, err := NewClient(host)
	if err != nil {
		return "", err
	}
	defer cli.Close()
	if err := Ping(ctx, cli); err != nil {
		return "", err
	}
	res, err := cli.ImageLoad(ctx, tarball, client.ImageLoadWithQuiet(true))
	if err != nil {
		return "", fmt.Errorf("load image: %w", err)
	}
	defer res.Close()
	return loadMessages(res)
}

// loadMessages reads the Engine's JSON progress stream of an image load.
func loadMessages(r io.Reader) (string, error) {
	dec := json.NewDecoder(r)
	var out []string
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return strings.Join(out, "\n"), nil
		}
		if err != nil {
			return strings.Join(out, "\n"), fmt.Errorf("load image: read the Engine's answer: %w", err)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return strings.Join(out, "\n"), fmt.Errorf("load image: %s", m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return strings.Join(out, "\n"), fmt.Errorf("load image: %s", m.Error)
		}
		if s := strings.TrimSpace(m.Stream); s != "" {
			out = append(out, s)
		}
	}
}

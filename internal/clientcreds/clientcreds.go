// Package clientcreds finds the TLS credentials a client (the CLI, the
// demo, the benchmarks, tests) talks to a cluster with.
package clientcreds

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/shoal-cluster/shoal/internal/datadir"
	"github.com/shoal-cluster/shoal/internal/pki"
	"github.com/shoal-cluster/shoal/internal/rpc"
)

// Find returns the credentials to use: those of the client config at
// configPath if given, else of the admin client config `shoal init` wrote
// in dataDir, else of the node in dataDir. The client config, if one was
// used, is returned too (it names a manager).
func Find(dataDir, configPath string) (*rpc.Credentials, *pki.ClientConfig, error) {
	if configPath == "" {
		if p := filepath.Join(dataDir, datadir.AdminFile); fileExists(p) {
			configPath = p
		}
	}
	if configPath != "" {
		cc, err := Read(configPath)
		if err != nil {
			return nil, nil, err
		}
		creds, err := rpc.NewCredentials(cc.CertPEM, cc.KeyPEM, cc.RootsPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", configPath, err)
		}
		return creds, cc, nil
	}
	certPEM, keyPEM, rootsPEM, err := datadir.LoadCerts(dataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("no credentials to talk to the cluster: %s holds no admin client config and no node certificate. "+
			"On a manager's machine, point --data-dir (or SHOAL_DATA_DIR) at its data dir; elsewhere, export a config with `shoal cluster client-config > FILE` on a manager and pass --client-config FILE", dataDir)
	}
	creds, err := rpc.NewCredentials(certPEM, keyPEM, rootsPEM)
	return creds, nil, err
}

// Admin returns the credentials of the admin client config in dataDir.
func Admin(dataDir string) (*rpc.Credentials, error) {
	creds, _, err := Find(dataDir, filepath.Join(dataDir, datadir.AdminFile))
	return creds, err
}

// Read parses a client config file.
func Read(path string) (*pki.ClientConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the client config: %w", err)
	}
	cc, err := pki.ParseClientConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cc, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

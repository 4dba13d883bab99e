package main

// `shoal secret`: create, ls, inspect and rm, modelled on `docker secret`.
// A secret's value goes to the cluster once, with create, and is never
// shown again: inspect and ls show its name, ID, size and dates.

import (
	"io"
	"time"

	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

// secretCLI is the secret kind for the commands secrets and configs share.
var secretCLI = blobCLI{noun: "secret", value: "value", limit: manager.MaxSecretSize, limitText: "500 KiB"}

// maxSecretRead bounds what secret create reads.
var maxSecretRead = secretCLI.maxRead()

// secretCommand is `shoal secret`, as `docker secret`.
func secretCommand(g *globalFlags) *cobra.Command {
	return group("secret", "Manage secrets",
		blobCreateCommand(g, secretCLI, func(s *session, ann *pb.Annotations, data []byte) (string, error) {
			resp, err := s.control.CreateSecret(s.ctx, &pb.CreateSecretRequest{Spec: &pb.SecretSpec{Annotations: ann, Data: data}})
			return resp.GetSecret().GetId(), err
		}),
		blobLsCommand(g, secretCLI, func(s *session) ([]*pb.Secret, error) {
			resp, err := s.control.ListSecrets(s.ctx, &pb.ListSecretsRequest{})
			return resp.GetSecrets(), err
		}, secretInfo),
		inspectCommand(g, "secret", "Show one or more secrets (never their values)", func(s *session, ref string) (*pb.GetSecretResponse, error) {
			return s.control.GetSecret(s.ctx, &pb.GetSecretRequest{Ref: ref})
		}, renderSecretPretty),
		removeCommand(g, "secret", func(s *session, ref string) error {
			_, err := s.control.RemoveSecret(s.ctx, &pb.RemoveSecretRequest{Ref: ref})
			return err
		}))
}

func secretInfo(sec *pb.Secret) blobInfo {
	return blobInfo{id: sec.GetId(), name: sec.GetSpec().GetAnnotations().GetName(), labels: sec.GetSpec().GetAnnotations().GetLabels(),
		size: sec.GetSize(), created: sec.GetMeta().GetCreatedAt(), updated: sec.GetMeta().GetUpdatedAt()}
}

// renderSecretPretty prints a secret as `secret inspect --pretty` does.
func renderSecretPretty(w io.Writer, g *pb.GetSecretResponse, now time.Time) {
	renderBlobPretty(w, secretInfo(g.GetSecret()), g.GetServices(), now)
}

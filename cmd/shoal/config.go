package main

// `shoal config`: create, ls, inspect and rm, modelled on `docker config`.
// Configs are not secret: inspect shows the data.

import (
	"fmt"
	"io"
	"time"

	"github.com/shoal-cluster/shoal/manager"
	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/cobra"
)

// configCLI is the config kind for the commands secrets and configs share.
var configCLI = blobCLI{noun: "config", value: "data", limit: manager.MaxConfigSize, limitText: "1000 KiB"}

// configCommand is `shoal config`, as `docker config`.
func configCommand(g *globalFlags) *cobra.Command {
	return group("config", "Manage configs",
		blobCreateCommand(g, configCLI, func(s *session, ann *pb.Annotations, data []byte) (string, error) {
			resp, err := s.control.CreateConfig(s.ctx, &pb.CreateConfigRequest{Spec: &pb.ConfigSpec{Annotations: ann, Data: data}})
			return resp.GetConfig().GetId(), err
		}),
		blobLsCommand(g, configCLI, func(s *session) ([]*pb.Config, error) {
			resp, err := s.control.ListConfigs(s.ctx, &pb.ListConfigsRequest{})
			return resp.GetConfigs(), err
		}, configInfo),
		inspectCommand(g, "config", "Show one or more configs, with their data", func(s *session, ref string) (*pb.GetConfigResponse, error) {
			return s.control.GetConfig(s.ctx, &pb.GetConfigRequest{Ref: ref})
		}, renderConfigPretty),
		removeCommand(g, "config", func(s *session, ref string) error {
			_, err := s.control.RemoveConfig(s.ctx, &pb.RemoveConfigRequest{Ref: ref})
			return err
		}))
}

func configInfo(c *pb.Config) blobInfo {
	return blobInfo{id: c.GetId(), name: c.GetSpec().GetAnnotations().GetName(), labels: c.GetSpec().GetAnnotations().GetLabels(),
		size: c.GetSize(), created: c.GetMeta().GetCreatedAt(), updated: c.GetMeta().GetUpdatedAt()}
}

// renderConfigPretty prints a config as `config inspect --pretty` does:
// what secrets show, then the data as it is.
func renderConfigPretty(w io.Writer, g *pb.GetConfigResponse, now time.Time) {
	renderBlobPretty(w, configInfo(g.GetConfig()), g.GetServices(), now)
	data := g.GetConfig().GetSpec().GetData()
	fmt.Fprintln(w, "Data:")
	w.Write(data)
	if len(data) > 0 && data[len(data)-1] != '\n' {
		fmt.Fprintln(w)
	}
}

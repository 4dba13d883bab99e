package main

// Service flags about ports and the endpoint: which ports a service
// publishes on the routing mesh (or on the nodes of its tasks) and how its
// name resolves.

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// portFlags are --publish (create), --publish-add and --publish-rm
// (update), and --endpoint-mode; and the networks, --network (create),
// --network-add and --network-rm (update).
type portFlags struct {
	publish               []string
	publishAdd, publishRm []string
	endpointMode          string
	network               []string
	networkAdd, networkRm []string
}

func (f *portFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a `port`: PUBLISHED:TARGET[/udp] or published=P,target=T[,protocol=udp][,mode=host][,local=true][,proxy-protocol=true] (repeatable); local: each node sends connections only to its own tasks, which see the client's address; proxy-protocol: the mesh's proxy sends tasks a PROXY v2 header")
	fs.StringVar(&f.endpointMode, "endpoint-mode", "vip", "how the service is reached: vip or dnsrr")
	fs.StringArrayVar(&f.network, "network", nil, "attach to a `network`: NAME or name=NAME[,alias=A]... (repeatable); every service reaches every other through the mesh, a network gives the service its aliases as DNS names")
}

func (f *portFlags) registerUpdate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.publishAdd, "publish-add", nil, "publish a `port`, as --publish of create: PUBLISHED:TARGET[/udp] (repeatable)")
	fs.StringArrayVar(&f.publishRm, "publish-rm", nil, "stop publishing a `port`: TARGET[/PROTOCOL] or PUBLISHED:TARGET[/PROTOCOL] (repeatable)")
	fs.StringVar(&f.endpointMode, "endpoint-mode", "", "how the service is reached: vip or dnsrr")
	fs.StringArrayVar(&f.networkAdd, "network-add", nil, "attach to a `network`, as --network of create: NAME or name=NAME[,alias=A]... (repeatable)")
	fs.StringArrayVar(&f.networkRm, "network-rm", nil, "detach from a `network` (NAME; repeatable)")
}

func (f *portFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	for _, p := range f.publish {
		port, err := parsePublish("--publish", p)
		if err != nil {
			return err
		}
		endpoint(spec).Ports = append(endpoint(spec).Ports, port)
	}
	for _, s := range f.network {
		a, err := parseNetwork("--network", s)
		if err != nil {
			return err
		}
		spec.Task.Networks = append(spec.Task.Networks, a)
	}
	return f.applyMode(spec, set)
}

func (f *portFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	for _, s := range f.publishRm {
		target, published, proto, err := parsePublishRef(s)
		if err != nil {
			return err
		}
		e := endpoint(spec)
		before := len(e.Ports)
		e.Ports = slices.DeleteFunc(e.Ports, func(p *pb.PortConfig) bool {
			return p.GetTargetPort() == target && p.GetProtocol() == proto && (published == 0 || p.GetPublishedPort() == published)
		})
		if len(e.Ports) == before {
			return fmt.Errorf("--publish-rm %s: the service publishes no such port", s)
		}
	}
	for _, s := range f.publishAdd {
		port, err := parsePublish("--publish-add", s)
		if err != nil {
			return err
		}
		e := endpoint(spec)
		// A port published again replaces the old one.
		e.Ports = slices.DeleteFunc(e.Ports, func(p *pb.PortConfig) bool {
			return p.GetProtocol() == port.GetProtocol() && (p.GetTargetPort() == port.GetTargetPort() ||
				(port.GetPublishedPort() != 0 && p.GetPublishedPort() == port.GetPublishedPort()))
		})
		e.Ports = append(e.Ports, port)
	}
	for _, s := range f.networkRm {
		before := len(spec.Task.Networks)
		spec.Task.Networks = slices.DeleteFunc(spec.Task.Networks, func(a *pb.NetworkAttachment) bool {
			return a.GetNetworkName() == s || a.GetNetworkId() == s
		})
		if len(spec.Task.Networks) == before {
			return fmt.Errorf("--network-rm %s: the service is not attached to that network", s)
		}
	}
	for _, s := range f.networkAdd {
		a, err := parseNetwork("--network-add", s)
		if err != nil {
			return err
		}
		// Attached again: the new aliases replace the old.
		spec.Task.Networks = slices.DeleteFunc(spec.Task.Networks, func(o *pb.NetworkAttachment) bool {
			return o.GetNetworkName() == a.GetNetworkName() || o.GetNetworkId() == a.GetNetworkName()
		})
		spec.Task.Networks = append(spec.Task.Networks, a)
	}
	return f.applyMode(spec, set)
}

// parseNetwork reads a network attachment: NAME, or name=NAME (also
// target=) with alias=A fields (repeatable), as Docker's --network.
func parseNetwork(flagName, s string) (*pb.NetworkAttachment, error) {
	if !strings.Contains(s, "=") {
		if s == "" {
			return nil, usagef("%s: give a network name", flagName)
		}
		return &pb.NetworkAttachment{NetworkName: s}, nil
	}
	a := &pb.NetworkAttachment{}
	for _, field := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(field, "=")
		switch {
		case (k == "name" || k == "target") && v != "":
			a.NetworkName = v
		case k == "alias" && v != "":
			a.Aliases = append(a.Aliases, v)
		default:
			return nil, usagef("%s %q: use NAME or name=NAME[,alias=A]... (%q is not a field Shoal takes: driver options are not supported)", flagName, s, field)
		}
	}
	if a.NetworkName == "" {
		return nil, usagef("%s %q: give the network's name=", flagName, s)
	}
	return a, nil
}

func (f *portFlags) applyMode(spec *pb.ServiceSpec, set map[string]bool) error {
	if !set["endpoint-mode"] {
		return nil
	}
	switch f.endpointMode {
	case "vip":
		endpoint(spec).Mode = pb.ResolutionMode_RESOLUTION_MODE_VIP
	case "dnsrr":
		endpoint(spec).Mode = pb.ResolutionMode_RESOLUTION_MODE_DNSRR
	default:
		return usagef("--endpoint-mode %q: use vip or dnsrr", f.endpointMode)
	}
	return nil
}

func endpoint(spec *pb.ServiceSpec) *pb.EndpointSpec {
	if spec.Endpoint == nil {
		spec.Endpoint = &pb.EndpointSpec{}
	}
	return spec.Endpoint
}

// parsePublish reads PUBLISHED:TARGET[/PROTOCOL], TARGET[/PROTOCOL], or
// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host][,local=BOOL][,proxy-protocol=BOOL].
func parsePublish(flagName, s string) (*pb.PortConfig, error) {
	bad := func(format string, args ...any) error {
		return usagef("%s %q: %s", flagName, s, fmt.Sprintf(format, args...))
	}
	p := &pb.PortConfig{}
	if strings.Contains(s, "=") {
		for _, field := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(field, "=")
			if !ok {
				return nil, bad("field %q: use KEY=VALUE", field)
			}
			switch strings.TrimSpace(k) {
			case "published":
				n, err := parsePort(v, true)
				if err != nil {
					return nil, bad("published=%s: %v", v, err)
				}
				p.PublishedPort = n
			case "target":
				n, err := parsePort(v, false)
				if err != nil {
					return nil, bad("target=%s: %v", v, err)
				}
				p.TargetPort = n
			case "protocol":
				proto, err := parseProtocol(v)
				if err != nil {
					return nil, bad("%v", err)
				}
				p.Protocol = proto
			case "mode":
				switch v {
				case "ingress":
					p.PublishMode = pb.PublishMode_PUBLISH_MODE_INGRESS
				case "host":
					p.PublishMode = pb.PublishMode_PUBLISH_MODE_HOST
				default:
					return nil, bad("mode=%s: use ingress or host", v)
				}
			case "name":
				p.Name = v
			case "local", "proxy-protocol":
				on, err := strconv.ParseBool(v)
				if err != nil {
					return nil, bad("%s=%s: use true or false", k, v)
				}
				if k == "local" {
					p.Local = on
				} else {
					p.ProxyProtocol = on
				}
			default:
				return nil, bad("unknown field %q: use published, target, protocol, mode, local and proxy-protocol", k)
			}
		}
		if p.TargetPort == 0 {
			return nil, bad("give target=PORT, the port the task listens on")
		}
		if p.Local && (p.PublishedPort == 0 || p.PublishMode == pb.PublishMode_PUBLISH_MODE_HOST) {
			return nil, bad("local=true is for ports published on the routing mesh: give published=PORT and no mode=host")
		}
		return p, nil
	}
	spec, protoStr, hasProto := strings.Cut(s, "/")
	if hasProto {
		proto, err := parseProtocol(protoStr)
		if err != nil {
			return nil, bad("%v", err)
		}
		p.Protocol = proto
	}
	parts := strings.Split(spec, ":")
	switch len(parts) {
	case 1:
		n, err := parsePort(parts[0], false)
		if err != nil {
			return nil, bad("%v; use PUBLISHED:TARGET, e.g. 8080:80", err)
		}
		p.TargetPort = n
	case 2:
		pub, err := parsePort(parts[0], true)
		if err != nil {
			return nil, bad("published port: %v; use PUBLISHED:TARGET, e.g. 8080:80", err)
		}
		target, err := parsePort(parts[1], false)
		if err != nil {
			return nil, bad("target port: %v; use PUBLISHED:TARGET, e.g. 8080:80", err)
		}
		p.PublishedPort, p.TargetPort = pub, target
	default:
		return nil, bad("use PUBLISHED:TARGET[/tcp|udp], e.g. 8080:80 (ports are published on every node; there is no IP to give)")
	}
	return p, nil
}

// parsePublishRef reads what --publish-rm takes: TARGET[/PROTOCOL] or
// PUBLISHED:TARGET[/PROTOCOL].
func parsePublishRef(s string) (target, published uint32, proto pb.PortProtocol, err error) {
	p, perr := parsePublish("--publish-rm", s)
	if perr != nil || strings.Contains(s, "=") {
		return 0, 0, 0, usagef("--publish-rm %q: use TARGET[/udp] or PUBLISHED:TARGET[/udp], e.g. 80 or 8080:80", s)
	}
	return p.GetTargetPort(), p.GetPublishedPort(), p.GetProtocol(), nil
}

func parsePort(s string, zeroOK bool) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n > 65535 || (n == 0 && !zeroOK) {
		if strings.Contains(s, "-") {
			return 0, fmt.Errorf("%q: port ranges are not supported; publish each port", s)
		}
		return 0, fmt.Errorf("%q is not a port number from 1 to 65535", s)
	}
	return uint32(n), nil
}

func parseProtocol(s string) (pb.PortProtocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return pb.PortProtocol_PORT_PROTOCOL_TCP, nil
	case "udp":
		return pb.PortProtocol_PORT_PROTOCOL_UDP, nil
	}
	return 0, fmt.Errorf("protocol %q: use tcp or udp", s)
}

package main

// Service flags about secrets and configs: which ones a service's tasks
// read, under which file name or path, mode and owner. Both take Docker's
// NAME or source=NAME,field=value... form and share the parsing.

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// fileFlags are --secret and --config (create), --secret-add, --secret-rm,
// --config-add and --config-rm (update).
type fileFlags struct {
	secrets             []string
	secretAdd, secretRm []string
	configs             []string
	configAdd, configRm []string
}

func (f *fileFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.secrets, "secret", nil, "give the tasks a `secret` as a file: NAME[,target=FILE][,mode=0400] (repeatable)")
	fs.StringArrayVar(&f.configs, "config", nil, "give the tasks a `config` as a file: NAME[,target=/PATH][,mode=0444][,uid=N][,gid=N] (repeatable)")
}

func (f *fileFlags) registerUpdate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.secretAdd, "secret-add", nil, "add or replace a `secret`, as --secret of create: NAME[,target=FILE][,mode=0400] (repeatable)")
	fs.StringArrayVar(&f.secretRm, "secret-rm", nil, "remove a `secret`, by name or ID (repeatable)")
	fs.StringArrayVar(&f.configAdd, "config-add", nil, "add or replace a `config`, as --config of create: NAME[,target=/PATH][,mode=0444][,uid=N][,gid=N] (repeatable)")
	fs.StringArrayVar(&f.configRm, "config-rm", nil, "remove a `config`, by name or ID (repeatable)")
}

// secretRefs and configRefs describe each kind's references to the
// shared create and update steps.
var (
	secretRefs = refKind[*pb.SecretReference]{noun: "secret", parse: parseSecretRef, target: (*pb.SecretReference).GetTarget,
		name: (*pb.SecretReference).GetSecretName, id: (*pb.SecretReference).GetSecretId, targetHint: "target=FILE"}
	configRefs = refKind[*pb.ConfigReference]{noun: "config", parse: parseConfigRef, target: (*pb.ConfigReference).GetTarget,
		name: (*pb.ConfigReference).GetConfigName, id: (*pb.ConfigReference).GetConfigId, targetHint: "target=/PATH"}
)

func (f *fileFlags) create(spec *pb.ServiceSpec, _ map[string]bool) error {
	c := spec.Task.Container
	var err error
	if c.Secrets, err = secretRefs.create(c.Secrets, f.secrets); err != nil {
		return err
	}
	c.Configs, err = configRefs.create(c.Configs, f.configs)
	return err
}

func (f *fileFlags) update(spec *pb.ServiceSpec, _ map[string]bool) error {
	c := spec.Task.Container
	var err error
	if c.Secrets, err = secretRefs.update(c.Secrets, f.secretRm, f.secretAdd); err != nil {
		return err
	}
	c.Configs, err = configRefs.update(c.Configs, f.configRm, f.configAdd)
	return err
}

// refKind is one kind of reference (secret or config) for the shared
// create and update steps.
type refKind[R any] struct {
	noun             string
	parse            func(flagName, s string) (R, error)
	target, name, id func(R) string
	targetHint       string
}

// create appends the references given with --NOUN; two on one target are
// refused.
func (k refKind[R]) create(refs []R, given []string) ([]R, error) {
	for _, v := range given {
		ref, err := k.parse("--"+k.noun, v)
		if err != nil {
			return nil, err
		}
		if i := slices.IndexFunc(refs, func(r R) bool { return k.target(r) == k.target(ref) }); i >= 0 {
			return nil, usagef("--%s %q: %s %s already uses the target %q; give one of them another %s", k.noun, v, k.noun, k.name(refs[i]), k.target(ref), k.targetHint)
		}
		refs = append(refs, ref)
	}
	return refs, nil
}

// update drops the references named with --NOUN-rm (by name or ID), then
// adds those of --NOUN-add; one added on a target in use replaces the one
// there.
func (k refKind[R]) update(refs []R, rm, add []string) ([]R, error) {
	for _, v := range rm {
		before := len(refs)
		refs = slices.DeleteFunc(refs, func(r R) bool { return k.name(r) == v || k.id(r) == v })
		if len(refs) == before {
			return nil, fmt.Errorf("--%s-rm %s: the service uses no such %s", k.noun, v, k.noun)
		}
	}
	for _, v := range add {
		ref, err := k.parse("--"+k.noun+"-add", v)
		if err != nil {
			return nil, err
		}
		refs = slices.DeleteFunc(refs, func(r R) bool { return k.target(r) == k.target(ref) })
		refs = append(refs, ref)
	}
	return refs, nil
}

// blobNameRE and secretTargetRE mirror the managers' rules, so mistakes
// are caught before anything is sent.
var (
	blobNameRE     = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)
	secretTargetRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,255}$`)
)

// parseRefFields parses NAME[,key=value...] (also Docker's source=NAME):
// it returns the name and hands every other field to set, which refuses
// fields it does not know. bad formats a refusal of the whole value.
func parseRefFields(flagName, s string, set func(k, v string, bad func(string, ...any) error) error) (string, func(string, ...any) error, error) {
	bad := func(format string, args ...any) error {
		return usagef("%s %q: %s", flagName, s, fmt.Sprintf(format, args...))
	}
	var name string
	for i, field := range strings.Split(s, ",") {
		k, v, hasValue := strings.Cut(field, "=")
		if i == 0 && !hasValue {
			name = k
			continue
		}
		switch key := strings.ToLower(strings.TrimSpace(k)); key {
		case "source", "src":
			name = v
		default:
			if err := set(key, v, bad); err != nil {
				return "", bad, err
			}
		}
	}
	return name, bad, nil
}

// parseMode parses an octal permission mode.
func parseMode(v string, bad func(string, ...any) error) (uint32, error) {
	m, err := strconv.ParseUint(v, 8, 32)
	if err != nil || m > 0o777 {
		return 0, bad("mode=%q: use an octal permission mode such as 0400 or 0444", v)
	}
	return uint32(m), nil
}

// parseSecretRef parses NAME[,target=FILE][,mode=0400] (also Docker's
// source=NAME,...). The target defaults to the name, the mode to 0400.
func parseSecretRef(flagName, s string) (*pb.SecretReference, error) {
	ref := &pb.SecretReference{Mode: 0o400}
	name, bad, err := parseRefFields(flagName, s, func(k, v string, bad func(string, ...any) error) error {
		var err error
		switch k {
		case "target":
			ref.Target = v
		case "mode":
			ref.Mode, err = parseMode(v, bad)
		case "uid", "gid":
			err = bad("%s is not supported: the file belongs to the task's user (process runtime) or root (docker); use mode=0444 to let any user read it", k)
		default:
			err = bad("unknown field %q: use NAME[,target=FILE][,mode=0400]", k)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	ref.SecretName = name
	if !blobNameRE.MatchString(ref.SecretName) {
		return nil, bad("give the secret's name: letters, digits, '-', '_' and '.', starting with a letter or digit")
	}
	if ref.Target == "" {
		ref.Target = ref.SecretName
	}
	if !secretTargetRE.MatchString(ref.Target) || ref.Target == "." || ref.Target == ".." {
		return nil, bad("target=%q: use a plain file name (no '/'); tasks find it in $SHOAL_SECRETS_DIR (process) or /run/secrets (docker)", ref.Target)
	}
	return ref, nil
}

// parseConfigRef parses NAME[,target=/PATH][,mode=0444][,uid=N][,gid=N]
// (also Docker's source=NAME,...). The target defaults to /NAME, the mode
// to 0444.
func parseConfigRef(flagName, s string) (*pb.ConfigReference, error) {
	ref := &pb.ConfigReference{Mode: 0o444}
	name, bad, err := parseRefFields(flagName, s, func(k, v string, bad func(string, ...any) error) error {
		var err error
		switch k {
		case "target", "dst", "destination":
			ref.Target = v
		case "mode":
			ref.Mode, err = parseMode(v, bad)
		case "uid", "gid":
			if _, perr := strconv.ParseUint(v, 10, 31); perr != nil {
				return bad("%s=%q: use a numeric ID", k, v)
			}
			if k == "uid" {
				ref.Uid = v
			} else {
				ref.Gid = v
			}
		default:
			err = bad("unknown field %q: use NAME[,target=/PATH][,mode=0444][,uid=N][,gid=N]", k)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	ref.ConfigName = name
	if !blobNameRE.MatchString(ref.ConfigName) {
		return nil, bad("give the config's name: letters, digits, '-', '_' and '.', starting with a letter or digit")
	}
	if ref.Target == "" {
		ref.Target = "/" + ref.ConfigName
	}
	if !path.IsAbs(ref.Target) || path.Clean(ref.Target) != ref.Target || ref.Target == "/" {
		return nil, bad("target=%q: use an absolute file path such as /etc/app.conf (no '..', no trailing '/'); process tasks find it under $SHOAL_CONFIGS_DIR", ref.Target)
	}
	return ref, nil
}

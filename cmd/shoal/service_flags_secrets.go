package main

// Service flags about secrets: which secrets a service's tasks read, under
// which file name and mode.

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// secretFlags are --secret (create), --secret-add and --secret-rm (update).
type secretFlags struct {
	secrets             []string
	secretAdd, secretRm []string
}

func (f *secretFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.secrets, "secret", nil, "give the tasks a `secret` as a file: NAME[,target=FILE][,mode=0400] (repeatable)")
}

func (f *secretFlags) registerUpdate(fs *pflag.FlagSet) {
	fs.StringArrayVar(&f.secretAdd, "secret-add", nil, "add or replace a `secret`, as --secret of create: NAME[,target=FILE][,mode=0400] (repeatable)")
	fs.StringArrayVar(&f.secretRm, "secret-rm", nil, "remove a `secret`, by name or ID (repeatable)")
}

func (f *secretFlags) create(spec *pb.ServiceSpec, _ map[string]bool) error {
	c := spec.Task.Container
	for _, v := range f.secrets {
		ref, err := parseSecretRef("--secret", v)
		if err != nil {
			return err
		}
		if i := slices.IndexFunc(c.Secrets, func(r *pb.SecretReference) bool { return r.GetTarget() == ref.GetTarget() }); i >= 0 {
			return usagef("--secret %q: secret %s already uses the target %q; give one of them another target=FILE", v, c.Secrets[i].GetSecretName(), ref.GetTarget())
		}
		c.Secrets = append(c.Secrets, ref)
	}
	return nil
}

func (f *secretFlags) update(spec *pb.ServiceSpec, _ map[string]bool) error {
	c := spec.Task.Container
	for _, v := range f.secretRm {
		before := len(c.Secrets)
		c.Secrets = slices.DeleteFunc(c.Secrets, func(r *pb.SecretReference) bool { return r.GetSecretName() == v || r.GetSecretId() == v })
		if len(c.Secrets) == before {
			return fmt.Errorf("--secret-rm %s: the service uses no such secret", v)
		}
	}
	for _, v := range f.secretAdd {
		ref, err := parseSecretRef("--secret-add", v)
		if err != nil {
			return err
		}
		// A secret on a target already in use replaces the one there.
		c.Secrets = slices.DeleteFunc(c.Secrets, func(r *pb.SecretReference) bool { return r.GetTarget() == ref.GetTarget() })
		c.Secrets = append(c.Secrets, ref)
	}
	return nil
}

// secretNameRE and secretTargetRE mirror the managers' rules, so mistakes
// are caught before anything is sent.
var (
	secretNameRE   = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)
	secretTargetRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,255}$`)
)

// parseSecretRef parses NAME[,target=FILE][,mode=0400] (also Docker's
// source=NAME,...). The target defaults to the name, the mode to 0400.
func parseSecretRef(flagName, s string) (*pb.SecretReference, error) {
	bad := func(format string, args ...any) error {
		return usagef("%s %q: %s", flagName, s, fmt.Sprintf(format, args...))
	}
	ref := &pb.SecretReference{Mode: 0o400}
	for i, field := range strings.Split(s, ",") {
		k, v, hasValue := strings.Cut(field, "=")
		if i == 0 && !hasValue {
			ref.SecretName = k
			continue
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "source", "src":
			ref.SecretName = v
		case "target":
			ref.Target = v
		case "mode":
			m, err := strconv.ParseUint(v, 8, 32)
			if err != nil || m > 0o777 {
				return nil, bad("mode=%q: use an octal permission mode such as 0400 or 0440", v)
			}
			ref.Mode = uint32(m)
		case "uid", "gid":
			return nil, bad("%s is not supported: the file belongs to the task's user (process runtime) or root (docker); use mode=0444 to let any user read it", k)
		default:
			return nil, bad("unknown field %q: use NAME[,target=FILE][,mode=0400]", k)
		}
	}
	if !secretNameRE.MatchString(ref.SecretName) {
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

package main

// Service flags about resources: what each task reserves on its node and
// the most it may use. Sizes use binary units whatever the spelling, as
// Docker does: 512M = 512Mi = 512MiB = 512*2^20 bytes; a bare number is
// bytes.

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	pb "github.com/shoal-cluster/shoal/proto"
	"github.com/spf13/pflag"
)

// resourceFlags are --reserve-cpu, --reserve-memory, --limit-cpu and
// --limit-memory, the same on create and update.
type resourceFlags struct {
	reserveCPU, reserveMem string
	limitCPU, limitMem     string
}

func (f *resourceFlags) registerCreate(fs *pflag.FlagSet) {
	fs.StringVar(&f.reserveCPU, "reserve-cpu", "", "`CPUs` to reserve per task, e.g. 0.5")
	fs.StringVar(&f.reserveMem, "reserve-memory", "", "`memory` to reserve per task, e.g. 64MiB, 512M, 1G")
	fs.StringVar(&f.limitCPU, "limit-cpu", "", "`CPUs` a task may use at most, e.g. 1.5")
	fs.StringVar(&f.limitMem, "limit-memory", "", "`memory` a task may use at most, e.g. 256MiB")
}

func (f *resourceFlags) registerUpdate(fs *pflag.FlagSet) { f.registerCreate(fs) }

func (f *resourceFlags) create(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func (f *resourceFlags) update(spec *pb.ServiceSpec, set map[string]bool) error {
	return f.apply(spec, set)
}

func (f *resourceFlags) apply(spec *pb.ServiceSpec, set map[string]bool) error {
	type res struct {
		flag, value string
		field       func(r *pb.ResourceRequirements) *pb.Resources
		memory      bool
	}
	limits := func(r *pb.ResourceRequirements) *pb.Resources {
		if r.Limits == nil {
			r.Limits = &pb.Resources{}
		}
		return r.Limits
	}
	reservations := func(r *pb.ResourceRequirements) *pb.Resources {
		if r.Reservations == nil {
			r.Reservations = &pb.Resources{}
		}
		return r.Reservations
	}
	for _, x := range []res{
		{"reserve-cpu", f.reserveCPU, reservations, false},
		{"reserve-memory", f.reserveMem, reservations, true},
		{"limit-cpu", f.limitCPU, limits, false},
		{"limit-memory", f.limitMem, limits, true},
	} {
		if !set[x.flag] {
			continue
		}
		if spec.Task.Resources == nil {
			spec.Task.Resources = &pb.ResourceRequirements{}
		}
		r := x.field(spec.Task.Resources)
		if x.memory {
			n, err := parseBytes(x.value)
			if err != nil {
				return usagef("--%s %q: %v", x.flag, x.value, err)
			}
			r.MemoryBytes = n
		} else {
			n, err := parseCPUs(x.value)
			if err != nil {
				return usagef("--%s %q: %v", x.flag, x.value, err)
			}
			r.NanoCpus = n
		}
	}
	// Drop what is all zero, so that "0" clears a setting.
	if r := spec.Task.Resources; r != nil {
		if r.Limits != nil && r.Limits.NanoCpus == 0 && r.Limits.MemoryBytes == 0 {
			r.Limits = nil
		}
		if r.Reservations != nil && r.Reservations.NanoCpus == 0 && r.Reservations.MemoryBytes == 0 {
			r.Reservations = nil
		}
		if r.Limits == nil && r.Reservations == nil {
			spec.Task.Resources = nil
		}
	}
	return nil
}

// parseBytes reads a size like 64MiB, 512M, 1G, 1.5GiB, 100KB or 4096.
// K, M, G and T are binary (1024) multiples, whatever the spelling.
func parseBytes(s string) (int64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' })
	unit := strings.ToLower(s[len(num):])
	num = strings.TrimSpace(num)
	if num == "" {
		return 0, errors.New("use a number with an optional unit, e.g. 64MiB, 512M or 1G")
	}
	var mult float64
	switch unit {
	case "", "b":
		mult = 1
	case "k", "ki", "kib", "kb":
		mult = 1 << 10
	case "m", "mi", "mib", "mb":
		mult = 1 << 20
	case "g", "gi", "gib", "gb":
		mult = 1 << 30
	case "t", "ti", "tib", "tb":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("unknown unit %q: use B, K, M, G or T (or KiB, MiB, GiB, TiB)", s[len(s)-len(unit):])
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, errors.New("use a number with an optional unit, e.g. 64MiB, 512M or 1G")
	}
	if v < 0 {
		return 0, errors.New("must not be negative")
	}
	n := v * mult
	if n > math.MaxInt64/2 {
		return 0, errors.New("too large")
	}
	return int64(n), nil
}

// parseCPUs reads a number of CPUs like 0.5 into nano-CPUs.
func parseCPUs(s string) (int64, error) {
	r, ok := new(big.Rat).SetString(strings.TrimSpace(s))
	if !ok {
		return 0, errors.New("use a number of CPUs, e.g. 0.5 or 2")
	}
	if r.Sign() < 0 {
		return 0, errors.New("must not be negative")
	}
	nano := r.Mul(r, big.NewRat(1e9, 1))
	if !nano.IsInt() {
		return 0, errors.New("too precise: at most 9 decimal places")
	}
	if !nano.Num().IsInt64() || nano.Num().Int64() > 1e15 {
		return 0, errors.New("too large")
	}
	return nano.Num().Int64(), nil
}

func formatCPUs(nano int64) string {
	return strconv.FormatFloat(float64(nano)/1e9, 'f', -1, 64)
}

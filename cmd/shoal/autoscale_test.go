package main

import (
	"regexp"
	"strings"
	"testing"
	"time"

	pb "github.com/shoal-cluster/shoal/proto"
	"google.golang.org/protobuf/proto"
)

func TestAutoscaleFlags(t *testing.T) {
	reserved := func() *pb.ServiceSpec {
		s := baseSpec("/bin/app")
		s.Annotations.Name = "web"
		s.Task.Resources = &pb.ResourceRequirements{Reservations: &pb.Resources{NanoCpus: 5e8}}
		return s
	}
	autoscaled := func(target uint32, lo, hi uint64) *pb.ServiceSpec {
		s := reserved()
		s.Autoscale = &pb.AutoscaleSpec{TargetCpuPercent: target, MinReplicas: lo, MaxReplicas: hi}
		return s
	}
	tests := []struct {
		name    string
		from    *pb.ServiceSpec // nil: create
		args    []string
		want    func() *pb.ServiceSpec
		wantErr string
	}{
		{name: "create", args: []string{"--name", "web", "--reserve-cpu", "0.5", "--autoscale-cpu", "70%", "--autoscale-min", "2", "--autoscale-max", "20", "/bin/app"},
			want: func() *pb.ServiceSpec { return autoscaled(70, 2, 20) }},
		{name: "create with windows, percent sign optional", args: []string{"--name", "web", "--reserve-cpu", "0.5", "--autoscale-cpu", "50", "--autoscale-max", "4",
			"--autoscale-sync", "2s", "--autoscale-downscale-window", "10s", "/bin/app"},
			want: func() *pb.ServiceSpec {
				s := autoscaled(50, 1, 4)
				s.Autoscale.SyncPeriod, s.Autoscale.DownscaleWindow = int64(2*time.Second), int64(10*time.Second)
				return s
			}},
		{name: "create without a reservation", args: []string{"--autoscale-cpu", "70%", "--autoscale-max", "4", "/bin/app"}, wantErr: "--autoscale-cpu needs --reserve-cpu"},
		{name: "create without a maximum", args: []string{"--reserve-cpu", "1", "--autoscale-cpu", "70%", "/bin/app"}, wantErr: "needs --autoscale-max"},
		{name: "create with a bound but no target", args: []string{"--autoscale-max", "4", "/bin/app"}, wantErr: "--autoscale-max needs --autoscale-cpu"},
		{name: "create of a global service", args: []string{"--mode", "global", "--reserve-cpu", "1", "--autoscale-cpu", "70%", "--autoscale-max", "4", "/bin/app"},
			wantErr: "only replicated services can be autoscaled"},
		{name: "bad target", args: []string{"--reserve-cpu", "1", "--autoscale-cpu", "lots", "--autoscale-max", "4", "/bin/app"}, wantErr: `--autoscale-cpu "lots"`},
		{name: "max below min", args: []string{"--reserve-cpu", "1", "--autoscale-cpu", "70", "--autoscale-min", "5", "--autoscale-max", "4", "/bin/app"},
			wantErr: "--autoscale-max (4) is below --autoscale-min (5)"},
		{name: "sync too short", args: []string{"--reserve-cpu", "1", "--autoscale-cpu", "70", "--autoscale-max", "4", "--autoscale-sync", "10ms", "/bin/app"},
			wantErr: "--autoscale-sync 10ms"},
		{name: "update turns it on", from: reserved(), args: []string{"--autoscale-cpu", "80%", "--autoscale-max", "6"},
			want: func() *pb.ServiceSpec { return autoscaled(80, 1, 6) }},
		{name: "update changes the bounds", from: autoscaled(70, 2, 20), args: []string{"--autoscale-max", "30"},
			want: func() *pb.ServiceSpec { return autoscaled(70, 2, 30) }},
		{name: "update with a zero window", from: autoscaled(70, 2, 20), args: []string{"--autoscale-downscale-window", "0s"},
			want: func() *pb.ServiceSpec {
				s := autoscaled(70, 2, 20)
				s.Autoscale.DownscaleWindow = -1
				return s
			}},
		{name: "update turns it off", from: autoscaled(70, 2, 20), args: []string{"--autoscale-cpu", "none"},
			want: func() *pb.ServiceSpec { return reserved() }},
		{name: "update of bounds of a service not autoscaled", from: reserved(), args: []string{"--autoscale-max", "6"}, wantErr: "service web is not autoscaled"},
		{name: "update: none with a bound", from: autoscaled(70, 2, 20), args: []string{"--autoscale-cpu", "none", "--autoscale-max", "6"},
			wantErr: "cannot go with --autoscale-cpu none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *pb.ServiceSpec
			var err error
			if tt.from == nil {
				got, err = createSpec(tt.args...)
			} else {
				got, err = updateSpec(tt.from, tt.args...)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.want(); !proto.Equal(got, want) {
				t.Errorf("spec =\n%s\nwant\n%s", text(got), text(want))
			}
		})
	}
}

func TestStatRows(t *testing.T) {
	stats := []*pb.TaskStat{
		{TaskId: "t1", ServiceName: "web", Slot: 1, Hostname: "w1", CpuReservation: 5e8, MemoryLimit: 100 << 20,
			Usage: &pb.TaskUsage{CpuWindow: 1e9, CpuNanoCores: 7e8, MemoryBytes: 25 << 20}},
		{TaskId: "t2", ServiceName: "web", Slot: 2, Hostname: "w2", CpuReservation: 5e8, MemoryLimit: 100 << 20,
			Usage: &pb.TaskUsage{CpuWindow: 1e9, CpuNanoCores: 1e8, MemoryBytes: 15 << 20}},
		{TaskId: "t3", ServiceName: "web", Slot: 3, Hostname: "w2", CpuReservation: 5e8, MemoryLimit: 100 << 20}, // no sample yet
	}
	rows, total := statRows(stats)
	if len(rows) != 3 || rows[0].Task != "web.1" || rows[0].CPUPercent != 70 || *rows[0].CPUReservationPercent != 140 || *rows[0].MemoryPercent != 25 {
		t.Errorf("row 1 = %+v", rows[0])
	}
	if rows[2].Sampled {
		t.Errorf("a task without a sample reads as sampled: %+v", rows[2])
	}
	if total.CPUPercent != 80 || *total.CPUReservationPercent != 80 || total.MemoryBytes != 40<<20 || total.MemoryLimit != 300<<20 {
		t.Errorf("total = %+v (CPU of reservation %v)", total, *total.CPUReservationPercent)
	}
	var b strings.Builder
	renderStats(&b, stats)
	for _, want := range []string{"web.1", "70.00%", "140.00%", "25.0MiB / 100.0MiB", "TOTAL (3 tasks)", "80.00%"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}

func TestRenderAutoscalePretty(t *testing.T) {
	svc := &pb.Service{Id: "svc1", Spec: existingSpec(), Meta: &pb.Meta{CreatedAt: ago_(time.Hour)}}
	svc.Spec.Autoscale = &pb.AutoscaleSpec{TargetCpuPercent: 70, MinReplicas: 2, MaxReplicas: 20, SyncPeriod: int64(2 * time.Second)}
	render := func() string {
		var b strings.Builder
		renderServicePretty(&b, svc, testNow)
		return regexp.MustCompile(`(\S) {2,}`).ReplaceAllString(b.String(), "$1 ")
	}
	for _, want := range []string{"Autoscaling:\n", " Target: CPU 70% of the reservation\n", " Bounds: 2 to 20 tasks\n",
		" Sync: every 2s; scale-down window 5m0s\n", " Last decision: none yet\n"} {
		if out := render(); !strings.Contains(out, want) {
			t.Errorf("inspect --pretty lacks %q:\n%s", want, out)
		}
	}
	svc.AutoscaleStatus = &pb.AutoscaleStatus{DecidedAt: ago_(30 * time.Second), FromReplicas: 3, ToReplicas: 6, Reason: "average CPU 142% of the 70% target"}
	if want, out := " Last decision: 3 → 6, 30 seconds ago: average CPU 142% of the 70% target\n", render(); !strings.Contains(out, want) {
		t.Errorf("inspect --pretty lacks %q:\n%s", want, out)
	}
	svc.Spec.Autoscale = nil
	if out := render(); strings.Contains(out, "Autoscaling") {
		t.Errorf("a service not autoscaled shows an autoscaler:\n%s", out)
	}
}

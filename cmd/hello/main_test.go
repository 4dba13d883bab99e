package main

import (
	"testing"
	"time"
)

func TestWorkDuration(t *testing.T) {
	tests := []struct {
		ms      string
		want    time.Duration
		wantErr bool
	}{
		{"", 50 * time.Millisecond, false},
		{"0", 0, false},
		{"250", 250 * time.Millisecond, false},
		{"10000", 10 * time.Second, false},
		{"10001", 0, true},
		{"-1", 0, true},
		{"lots", 0, true},
	}
	for _, tt := range tests {
		got, err := workDuration(tt.ms)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("workDuration(%q) = %v, %v; want %v, error %v", tt.ms, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestBurnTakesItsTime(t *testing.T) {
	start := time.Now()
	burn(20 * time.Millisecond)
	if took := time.Since(start); took < 20*time.Millisecond {
		t.Fatalf("burn(20ms) returned after %s", took)
	}
}

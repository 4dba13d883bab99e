package main

import "testing"

func TestParseWrk(t *testing.T) {
	const out = `Running 5s test @ http://127.0.0.1:8080/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.00us  1.10ms  30.12ms   97.50%
    Req/Sec    20.11k     1.20k   23.00k    70.00%
  Latency Distribution
     50%  312.00us
     75%  420.00us
     90%  610.00us
     99%    1.52ms
  200110 requests in 5.00s, 24.61MB read
Requests/sec:  40021.87
Transfer/sec:      4.92MB
`
	cases := []struct {
		name    string
		out     string
		rps     float64
		p99     float64
		reqs    float64
		wantErr bool
	}{
		{name: "keep-alive", out: out, rps: 40021.87, p99: 1.52, reqs: 200110},
		{name: "microseconds", out: "     99%  850.00us\nRequests/sec:  10.5\n", rps: 10.5, p99: 0.85},
		{name: "seconds", out: "     99%    1.20s\nRequests/sec:  3\n", rps: 3, p99: 1200},
		{name: "connect errors", out: out + "  Socket errors: connect 16, read 0, write 0, timeout 0\n", wantErr: true},
		{name: "read errors are fine", out: out + "  Socket errors: connect 0, read 12, write 0, timeout 0\n", rps: 40021.87, p99: 1.52, reqs: 200110},
		{name: "no latency", out: "Requests/sec:  3\n", wantErr: true},
		{name: "garbage", out: "     99%  fast\nRequests/sec:  3\n", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseWrk([]byte(tc.out))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", r)
				}
				return
			}
			if err != nil || r.rps != tc.rps || r.p99 != tc.p99 || r.requests != tc.reqs {
				t.Fatalf("got %+v, %v; want rps %v p99 %v requests %v", r, err, tc.rps, tc.p99, tc.reqs)
			}
		})
	}
}

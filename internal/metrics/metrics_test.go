package metrics

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestTop(t *testing.T) {
	tests := []struct {
		name string
		in   int
		n    int
		want int // entries returned
	}{
		{name: "fewer than n", in: 3, n: 5, want: 3},
		{name: "exactly n", in: 5, n: 5, want: 5},
		{name: "more than n", in: 8, n: 5, want: 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ds []Destination
			total := 0
			for i := range tc.in {
				ds = append(ds, Destination{Host: fmt.Sprintf("h%d:443", i), InFlight: i, Queued: 1})
				total += i + 1
			}
			got := Top(ds, tc.n)
			if len(got) != tc.want {
				t.Fatalf("Top() returned %d entries, want %d", len(got), tc.want)
			}
			sum := 0
			for _, d := range got {
				sum += d.InFlight + d.Queued
			}
			if sum != total {
				t.Fatalf("Top() sums to %d, want %d", sum, total)
			}
			if tc.in > tc.n {
				if last := got[len(got)-1]; last.Host != OtherDestination {
					t.Fatalf("Top() last = %q, want %q", last.Host, OtherDestination)
				}
				if got[0].Host != fmt.Sprintf("h%d:443", tc.in-1) {
					t.Fatalf("Top() first = %q, want the busiest", got[0].Host)
				}
			}
		})
	}
}

func TestRegistryIsPerProcess(t *testing.T) {
	a, b := New("test"), New("test")
	a.Decoded(3)
	if got := testutil.ToFloat64(b.ChangesDecoded); got != 0 {
		t.Fatalf("second registry's changes_decoded_total = %v, want 0", got)
	}
	a.SetDestinations(func() []Destination {
		var ds []Destination
		for i := range MaxDestinations + 5 {
			ds = append(ds, Destination{Host: fmt.Sprintf("h%d:443", i), InFlight: 1})
		}
		return ds
	})
	n, err := testutil.GatherAndCount(a.Registry, "walhook_deliveries_in_flight")
	if err != nil {
		t.Fatal(err)
	}
	if n != MaxDestinations+1 {
		t.Fatalf("walhook_deliveries_in_flight series = %d, want %d", n, MaxDestinations+1)
	}
	want := "\n# HELP walhook_changes_decoded_total Row changes decoded from the replication stream.\n# TYPE walhook_changes_decoded_total counter\nwalhook_changes_decoded_total 3\n"
	if err := testutil.GatherAndCompare(a.Registry, strings.NewReader(want), "walhook_changes_decoded_total"); err != nil {
		t.Fatal(err)
	}
}

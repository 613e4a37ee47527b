package deliver

import "testing"

func TestBatchID(t *testing.T) {
	a := BatchID([]string{"x", "y", "z"})
	tests := []struct {
		name string
		ids  []string
		same bool
	}{
		{"same events", []string{"x", "y", "z"}, true},
		{"same events in another order", []string{"z", "x", "y"}, true},
		{"one event fewer", []string{"x", "y"}, false},
		{"ids that join alike", []string{"xy", "z"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := BatchID(tc.ids); (got == a) != tc.same {
				t.Fatalf("BatchID(%v) = %s, BatchID([x y z]) = %s, want same = %v", tc.ids, got, a, tc.same)
			}
		})
	}
	if len(a) != 36 || a[14] != '8' {
		t.Fatalf("BatchID() = %s, want a version 8 UUID", a)
	}
}

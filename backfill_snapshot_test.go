package walhook

import "testing"

// TestSnapshotSees: a chunk drops the rows of exactly the transactions its
// snapshot did not see: those in progress when it was taken and those
// that began after, with xids compared modulo 2^32.
func TestSnapshotSees(t *testing.T) {
	for _, tc := range []struct {
		text string
		xid  uint32
		want bool
	}{
		{"100:105:", 99, true},
		{"100:105:", 104, true},
		{"100:105:", 105, false},
		{"100:105:101,103", 101, false},
		{"100:105:101,103", 102, true},
		{"100:105:101,103", 103, false},
		// The epoch is dropped: 4294967296+5 is xid 5.
		{"4294967300:4294967306:4294967301", 4, true},
		{"4294967300:4294967306:4294967301", 5, false},
		{"4294967300:4294967306:4294967301", 10, false},
		// Across wraparound: xmax 3 is after 4294967290.
		{"4294967290:4294967299:", 4294967290, true},
	} {
		s, err := parseSnapshot(tc.text)
		if err != nil {
			t.Fatalf("%s: %v", tc.text, err)
		}
		if got := s.sees(tc.xid); got != tc.want {
			t.Errorf("snapshot %s sees %d = %v, want %v", tc.text, tc.xid, got, tc.want)
		}
	}
	for _, bad := range []string{"", "1:2", "a:2:", "1:b:", "1:2:x"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q) accepted it", bad)
		}
	}
}

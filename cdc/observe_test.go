package cdc

import (
	"testing"
	"time"

	"github.com/walhook/walhook/internal/change"
)

func TestTrackerLag(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	tr := NewTracker(100, 0)
	if got := tr.Lag(t0); got != 0 {
		t.Fatalf("Lag() with nothing pending = %v, want 0", got)
	}
	a := tr.open(change.Tx{XID: 1, CommitLSN: 200, CommitTime: t0})
	a.EndLSN = 210
	b := tr.open(change.Tx{XID: 2, CommitLSN: 300, CommitTime: t0.Add(10 * time.Second)})
	b.EndLSN = 310
	if got, want := tr.Lag(t0.Add(30*time.Second)), 30*time.Second; got != want {
		t.Fatalf("Lag() before any acknowledgement = %v, want %v (since the oldest pending commit)", got, want)
	}
	a.Seal()
	if got, want := tr.Lag(t0.Add(30*time.Second)), 30*time.Second; got != want {
		t.Fatalf("Lag() after acknowledging the first = %v, want %v (since its commit)", got, want)
	}
	b.Seal()
	if got := tr.Lag(t0.Add(time.Hour)); got != 0 {
		t.Fatalf("Lag() with everything acknowledged = %v, want 0", got)
	}
}

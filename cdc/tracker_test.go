package cdc

import (
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/internal/change"
)

func TestTrackerConfirmsOnlyResolvedPrefix(t *testing.T) {
	tr := NewTracker(100, 0)
	a := tr.open(change.Tx{})
	b := tr.open(change.Tx{})
	c := tr.open(change.Tx{})
	a.EndLSN, b.EndLSN, c.EndLSN = 200, 300, 400
	a.Add(1)
	b.Add(2)
	c.Add(1)
	for _, x := range []*Txn{a, b, c} {
		x.Seal()
	}
	steps := []struct {
		name string
		do   func()
		want pglogrepl.LSN
	}{
		{"nothing done", func() {}, 100},
		{"last done first", c.Done, 100},
		{"middle half done", b.Done, 100},
		{"first done", a.Done, 200},
		{"middle done releases the rest", b.Done, 400},
		{"idle keepalive moves on", func() { tr.idle(500) }, 500},
		{"an older keepalive never moves back", func() { tr.idle(450) }, 500},
	}
	for _, s := range steps {
		s.do()
		if got := tr.Confirmed(); got != s.want {
			t.Fatalf("%s: Confirmed() = %s, want %s", s.name, got, s.want)
		}
	}
	if n := tr.Pending(); n != 0 {
		t.Fatalf("Pending() = %d, want 0", n)
	}
}

func TestTrackerIdleWaitsForPending(t *testing.T) {
	tr := NewTracker(100, 0)
	x := tr.open(change.Tx{})
	tr.idle(900)
	if got := tr.Confirmed(); got != 100 {
		t.Fatalf("Confirmed() with an open transaction = %s, want 100", got)
	}
	x.EndLSN = 150
	x.Seal() // no work: resolves at once
	if got := tr.Confirmed(); got != 150 {
		t.Fatalf("Confirmed() = %s, want 150", got)
	}
}

func TestTrackerUnsealedBlocks(t *testing.T) {
	tr := NewTracker(10, 0)
	x := tr.open(change.Tx{})
	x.EndLSN = 20
	x.Add(1)
	x.Done() // work finished before the consumer saw the commit
	if got := tr.Confirmed(); got != 10 {
		t.Fatalf("Confirmed() before Seal = %s, want 10", got)
	}
	x.Seal()
	if got := tr.Confirmed(); got != 20 {
		t.Fatalf("Confirmed() after Seal = %s, want 20", got)
	}
}

func TestTrackerCap(t *testing.T) {
	tr := NewTracker(10, 2)
	a := tr.open(change.Tx{CommitLSN: 20, EndLSN: 21})
	if tr.full() {
		t.Fatal("full with 1 of 2 pending")
	}
	b := tr.open(change.Tx{CommitLSN: 30, EndLSN: 31})
	if !tr.full() {
		t.Fatal("not full with 2 of 2 pending")
	}
	b.EndLSN = 31
	b.Seal() // resolved, but a is still pending before it
	if !tr.full() {
		t.Fatal("room made while the oldest is still pending")
	}
	select {
	case <-tr.room:
		t.Fatal("room signalled while nothing left the list")
	default:
	}
	a.EndLSN = 21
	a.Seal()
	if tr.full() {
		t.Fatal("still full after both resolved")
	}
	select {
	case <-tr.room:
	default:
		t.Fatal("no room signal after the list shrank")
	}
	if got := tr.Confirmed(); got != 31 {
		t.Fatalf("Confirmed() = %s, want 0/1F", got)
	}
}

package subs

import (
	"fmt"
	"slices"
	"testing"
)

func TestAppendAncestors(t *testing.T) {
	tests := []struct {
		name  string
		start []string
		site  string
		want  []string
	}{
		{"root", nil, "/", []string{"/"}},
		{"deep", nil, "/NOAA/NWS/OUN", []string{"/NOAA/NWS/OUN", "/NOAA/NWS", "/NOAA", "/"}},
		{"shared ancestors once", []string{"/NOAA/NWS/OUN", "/NOAA/NWS", "/NOAA", "/"}, "/NOAA/NWS/OKC", []string{"/NOAA/NWS/OUN", "/NOAA/NWS", "/NOAA", "/", "/NOAA/NWS/OKC"}},
		{"empty is root", nil, "", []string{""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := AppendAncestors(slices.Clone(tc.start), tc.site); !slices.Equal(got, tc.want) {
				t.Fatalf("AppendAncestors(%v, %q) = %v, want %v", tc.start, tc.site, got, tc.want)
			}
		})
	}
}

func TestIndexPutRemoveMatch(t *testing.T) {
	ix := New()
	ix.Put(&Subscription{ID: "a", Event: "order.created", Site: "/", Active: true})
	ix.Put(&Subscription{ID: "b", Event: "order.created", Site: "/acme", Active: true})
	ix.Put(&Subscription{ID: "c", Event: "order.created", Site: "/acme", Active: false})
	ix.Put(&Subscription{ID: "d", Event: "order.updated", Site: "/", Active: true})

	ids := func(subs []*Subscription) []string {
		var out []string
		for _, s := range subs {
			out = append(out, s.ID)
		}
		slices.Sort(out)
		return out
	}
	match := func() []string {
		return ids(ix.Match(nil, "order.created", AppendAncestors(nil, "/acme/east")))
	}
	if got := match(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Match() = %v, want [a b] (inactive c left out)", got)
	}
	held := ix.Match(nil, "order.created", []string{"/acme"})
	ix.Put(&Subscription{ID: "c", Event: "order.created", Site: "/acme", Active: true})
	if got := match(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("after activating c, Match() = %v, want [a b c]", got)
	}
	ix.Remove("b")
	if got := match(); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("after removing b, Match() = %v, want [a c]", got)
	}
	if got := ids(held); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("a slice Match returned earlier changed to %v", got)
	}
	// Moving a subscription to another event takes it off the old key.
	ix.Put(&Subscription{ID: "a", Event: "order.updated", Site: "/", Active: true})
	if got := match(); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("after moving a, Match() = %v, want [c]", got)
	}
	if ix.Len() != 3 {
		t.Fatalf("Len() = %d, want 3", ix.Len())
	}
}

// BenchmarkMatch shows that lookup cost follows the site depth, not the
// number of subscriptions.
func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ix := New()
			for i := range n {
				ix.Put(&Subscription{ID: fmt.Sprint(i), Event: "order.created", Site: fmt.Sprintf("/t%d", i), Active: true})
			}
			sites := AppendAncestors(nil, "/t42/east/room")
			var dst []*Subscription
			b.ReportAllocs()
			for b.Loop() {
				dst = ix.Match(dst[:0], "order.created", sites)
			}
			if len(dst) != 1 {
				b.Fatalf("matched %d, want 1", len(dst))
			}
		})
	}
}

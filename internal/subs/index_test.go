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
	ix.Put(&Subscription{ID: "a", Events: []string{"order.created"}, Site: "/", Active: true})
	ix.Put(&Subscription{ID: "b", Events: []string{"order.created"}, Site: "/acme", Active: true})
	ix.Put(&Subscription{ID: "c", Events: []string{"order.created"}, Site: "/acme", Active: false})
	ix.Put(&Subscription{ID: "d", Events: []string{"order.updated"}, Site: "/", Active: true})

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
	ix.Put(&Subscription{ID: "c", Events: []string{"order.created"}, Site: "/acme", Active: true})
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
	ix.Put(&Subscription{ID: "a", Events: []string{"order.updated"}, Site: "/", Active: true})
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
				ix.Put(&Subscription{ID: fmt.Sprint(i), Events: []string{"order.created"}, Site: fmt.Sprintf("/t%d", i), Active: true})
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

func TestMatchPatterns(t *testing.T) {
	ix := New()
	put := func(id, site string, events ...string) {
		ix.Put(&Subscription{ID: id, Events: events, Site: site, Active: true})
	}
	put("exact", "/", "order.created")
	put("noun", "/", "order.*")
	put("verb", "/", "*.created")
	put("all", "/", "*")
	put("both", "/", "order.created", "order.*") // once per event, not twice
	put("many", "/", "order.updated", "customer.created", "*.deleted")
	put("deep", "/acme", "order.*")
	put("dotted", "/", "order.item.*") // not a pattern the API accepts: matches nothing
	tests := []struct {
		event string
		site  string
		want  []string
	}{
		{"order.created", "/", []string{"all", "both", "exact", "noun", "verb"}},
		{"order.updated", "/", []string{"all", "both", "many", "noun"}},
		{"customer.created", "/", []string{"all", "many", "verb"}},
		{"customer.deleted", "/", []string{"all", "many"}},
		{"order.paid", "/acme/east", []string{"all", "both", "deep", "noun"}},
		// A derived event with more dots: the noun is before the first dot,
		// the verb after the last.
		{"order.item.created", "/", []string{"all", "both", "noun", "verb"}},
		{"invoice.sent", "/", []string{"all"}},
	}
	for _, tc := range tests {
		t.Run(tc.event, func(t *testing.T) {
			var got []string
			for _, s := range ix.Match(nil, tc.event, AppendAncestors(nil, tc.site)) {
				got = append(got, s.ID)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Match(%q at %s) = %v, want %v", tc.event, tc.site, got, tc.want)
			}
		})
	}
	// Changing a subscription's events takes it off every old key.
	put("many", "/", "invoice.*")
	if got := ix.Match(nil, "order.updated", []string{"/"}); len(got) != 3 {
		t.Fatalf("after set_events, order.updated matches %d subscriptions, want 3 (all, both, noun)", len(got))
	}
	ix.Remove("both")
	ix.Remove("all")
	if got := ix.Match(nil, "order.created", []string{"/"}); len(got) != 3 {
		t.Fatalf("after removals, order.created matches %d, want 3 (exact, noun, verb)", len(got))
	}
}

func TestParseTextArray(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"{}", []string{}},
		{"{order.created}", []string{"order.created"}},
		{"{order.created,order.*,*}", []string{"order.created", "order.*", "*"}},
		{`{"a b","c,d","e\"f",NULL,"NULL"}`, []string{"a b", "c,d", `e"f`, "NULL"}},
		{"not an array", nil},
	}
	for _, tc := range tests {
		if got := ParseTextArray(tc.in); !slices.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Fatalf("ParseTextArray(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// BenchmarkMatchMixed matches against 100k subscriptions of which a third
// use patterns, spread over 50 nouns, 4 verbs and 1000 sites: the cost is
// four map reads per site of the change, whatever the count.
func BenchmarkMatchMixed(b *testing.B) {
	const n = 100_000
	verbs := []string{"created", "updated", "deleted", "paid"}
	ix := New()
	for i := range n {
		noun := fmt.Sprintf("noun%d", i%50)
		verb := verbs[i%len(verbs)]
		var events []string
		switch i % 6 {
		case 0:
			events = []string{noun + ".*"}
		case 1:
			events = []string{"*." + verb}
		case 2:
			events = []string{noun + "." + verb, noun + ".*"}
		case 3:
			events = []string{noun + "." + verb, noun + "." + verbs[(i+1)%len(verbs)]}
		default:
			events = []string{noun + "." + verb}
		}
		if i%10_000 == 0 {
			events = []string{"*"}
		}
		ix.Put(&Subscription{ID: fmt.Sprint(i), Events: events, Site: fmt.Sprintf("/t%d", i%1000), Active: true})
	}
	sites := AppendAncestors(nil, "/t42/east/room")
	var dst []*Subscription
	b.ReportAllocs()
	for b.Loop() {
		dst = ix.Match(dst[:0], "noun42.created", sites)
	}
	if len(dst) == 0 {
		b.Fatal("matched nothing")
	}
	b.ReportMetric(float64(len(dst)), "matches")
}

package acl

import (
	"context"
	"strconv"
	"testing"

	"github.com/walhook/walhook/internal/change"
)

// benchRules compiles the typical tenant rule.
func benchRules(b *testing.B) *Rules {
	b.Helper()
	return compileYAML(b, ordersYAML)
}

// benchRel and benchRow are a typical orders row as the stream decodes it.
var (
	benchRel = &change.Relation{Schema: "public", Name: "orders", Columns: []change.Column{
		{Name: "id", TypeOID: 20, Key: true},
		{Name: "tenant_id", TypeOID: 25},
		{Name: "status", TypeOID: 16385},
		{Name: "total", TypeOID: 1700},
		{Name: "created_at", TypeOID: 1184},
		{Name: "tags", TypeOID: 1009},
	}}
	benchRow = change.Row{
		{Kind: change.Text, Text: []byte("123456")},
		{Kind: change.Text, Text: []byte("tenant-7")},
		{Kind: change.Text, Text: []byte("paid")},
		{Kind: change.Text, Text: []byte("99.90")},
		{Kind: change.Text, Text: []byte("2024-03-01 12:34:56.789012+00")},
		{Kind: change.Text, Text: []byte("{a,b}")},
	}
)

// benchOwner has five tenants, the row's last, and is no admin: the rule
// scans the whole list and then reads owner.admin, its slowest path.
func benchOwner(id string, tenant int) map[string]any {
	tenants := make([]any, 5)
	for i := range tenants {
		tenants[i] = "tenant-" + strconv.Itoa(tenant+i-4)
	}
	return owner(id, map[string]any{"tenants": tenants, "admin": false})
}

func BenchmarkAllow(b *testing.B) {
	r := benchRules(b)
	in := &Input{Op: change.Insert, Table: "public.orders", New: RowValues(benchRel, benchRow)}
	deny := benchOwner("u1", 100)
	allow := benchOwner("u2", 7)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		o := allow
		if i&1 == 1 {
			o = deny
		}
		ok, err := r.Allow("public.orders", in, o)
		if err != nil || ok != (i&1 == 0) {
			b.Fatalf("Allow() = %v, %v", ok, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
}

func BenchmarkAllowParallel(b *testing.B) {
	r := benchRules(b)
	in := &Input{Op: change.Insert, New: RowValues(benchRel, benchRow)}
	o := benchOwner("u2", 7)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if ok, err := r.Allow("public.orders", in, o); !ok || err != nil {
				b.Errorf("Allow() = %v, %v", ok, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
}

// ownersSource serves n synthetic owners, for the fan-out benchmark.
type ownersSource struct{ n int }

func (s ownersSource) LoadOwners(_ context.Context, ids []string) (map[string]map[string]any, error) {
	out := make(map[string]map[string]any, len(ids))
	for _, id := range ids {
		n, _ := strconv.Atoi(id[1:])
		tenants := []any{"tenant-" + strconv.Itoa(n%50), "tenant-" + strconv.Itoa(n%50+1)}
		out[id] = map[string]any{"tenants": tenants, "admin": n%100 == 0}
	}
	return out, nil
}

// BenchmarkFanOut judges one row for 10,000 subscriptions of 1,000 owners,
// as the pipeline does per row: convert the row once, fetch the owners from
// the warm cache, judge each owner once with AllowMany, then look up each
// subscription's verdict. One op is one row.
func BenchmarkFanOut(b *testing.B) {
	const subs, owners = 10_000, 1_000
	r := benchRules(b)
	ctx := context.Background()
	cache := NewOwners(ownersSource{owners}, 2*owners)
	subOwner := make([]string, subs)
	ids := make([]string, owners)
	for i := range ids {
		ids[i] = "u" + strconv.Itoa(i)
	}
	for i := range subOwner {
		subOwner[i] = ids[i%owners]
	}
	if _, err := cache.Get(ctx, ids); err != nil {
		b.Fatal(err)
	}
	verdicts := make(map[string]bool, owners)
	b.ReportAllocs()
	b.ResetTimer()
	delivered := 0
	for range b.N {
		in := &Input{Op: change.Insert, Table: "public.orders", New: RowValues(benchRel, benchRow)}
		attrs, err := cache.Get(ctx, ids)
		if err != nil {
			b.Fatal(err)
		}
		if failed, err := r.AllowMany("public.orders", in, attrs, verdicts); failed > 0 {
			b.Fatal(err)
		}
		for _, o := range subOwner {
			if verdicts[o] {
				delivered++
			}
		}
	}
	if delivered == 0 {
		b.Fatal("no subscription allowed")
	}
	b.ReportMetric(float64(b.N*owners)/b.Elapsed().Seconds(), "checks/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*subs), "ns/sub")
}

func BenchmarkRowValues(b *testing.B) {
	b.ReportAllocs()
	for range b.N {
		RowValues(benchRel, benchRow)
	}
}

func BenchmarkCompile(b *testing.B) {
	cfg := parse(b, ordersYAML)
	b.ReportAllocs()
	for range b.N {
		if _, err := Compile(cfg.File, tablesOf(cfg)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAllowComprehension shows the price of the runtime cost limit,
// which only rules with comprehensions pay.
func BenchmarkAllowComprehension(b *testing.B) {
	r := compileYAML(b, "tables:\n  - table: public.orders\n    noun: order\n    acl: owner.tenants.exists(t, t == row.tenant_id)\n")
	in := &Input{Op: change.Insert, New: RowValues(benchRel, benchRow)}
	o := benchOwner("u2", 7)
	b.ReportAllocs()
	for range b.N {
		if ok, err := r.Allow("public.orders", in, o); !ok || err != nil {
			b.Fatalf("Allow() = %v, %v", ok, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
}

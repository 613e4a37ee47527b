package expr

import (
	"math"
	"testing"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	"github.com/walhook/walhook/internal/change"
)

// list builds a CEL list for comparisons.
func list(elems ...ref.Val) ref.Val {
	return types.NewRefValList(types.DefaultTypeAdapter, elems)
}

func ts(s string) ref.Val {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return types.Timestamp{Time: t}
}

// equal compares CEL values, NaN equal to NaN.
func equal(a, b ref.Val) bool {
	if fa, ok := a.(types.Double); ok {
		if fb, ok := b.(types.Double); ok && math.IsNaN(float64(fa)) && math.IsNaN(float64(fb)) {
			return true
		}
	}
	return a.Type() == b.Type() && a.Equal(b) == types.True
}

func TestConvert(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		oid  uint32
		text string
		want ref.Val
	}{
		{"int2", 21, "-32768", types.Int(-32768)},
		{"int4", 23, "42", types.Int(42)},
		{"int8 max", 20, "9223372036854775807", types.Int(math.MaxInt64)},
		{"int8 min", 20, "-9223372036854775808", types.Int(math.MinInt64)},
		{"int8 overflow stays text", 20, "9223372036854775808", types.String("9223372036854775808")},
		{"oid", 26, "4294967295", types.Int(4294967295)},
		{"float4", 700, "1.5e-07", types.Double(1.5e-07)},
		{"float8", 701, "-0.25", types.Double(-0.25)},
		{"float8 NaN", 701, "NaN", types.Double(math.NaN())},
		{"float8 Infinity", 701, "Infinity", types.Double(math.Inf(1))},
		{"float8 -Infinity", 701, "-Infinity", types.Double(math.Inf(-1))},
		{"numeric", 1700, "1234.5600", types.Double(1234.56)},
		{"numeric past float range", 1700, "1e400", types.Double(math.Inf(1))},
		{"numeric hex is not PostgreSQL output", 1700, "0x10", types.String("0x10")},
		{"bool true", 16, "t", types.True},
		{"bool false", 16, "f", types.False},
		{"bool odd text", 16, "yes", types.String("yes")},
		{"text", 25, "héllo, \"world\"", types.String("héllo, \"world\"")},
		{"varchar", 1043, "x", types.String("x")},
		{"uuid", 2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", types.String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")},
		{"enum (unknown oid)", 16385, "paid", types.String("paid")},
		{"timestamptz", 1184, "2024-03-01 12:34:56.789012+00", ts("2024-03-01T12:34:56.789012Z")},
		{"timestamptz offset", 1184, "2024-03-01 12:34:56+05:30", ts("2024-03-01T07:04:56Z")},
		{"timestamptz seconds offset", 1184, "1900-01-01 00:00:00-00:19:32", ts("1900-01-01T00:19:32Z")},
		{"timestamptz hour offset", 1184, "2024-03-01 12:00:00-08", ts("2024-03-01T20:00:00Z")},
		{"timestamptz bad offset stays text", 1184, "2024-03-01 12:00:00+5:30", types.String("2024-03-01 12:00:00+5:30")},
		{"timestamp", 1114, "2024-03-01 12:34:56.5", ts("2024-03-01T12:34:56.5Z")},
		{"date", 1082, "2024-02-29", ts("2024-02-29T00:00:00Z")},
		{"date infinity stays text", 1082, "infinity", types.String("infinity")},
		{"timestamp BC stays text", 1114, "0044-03-15 00:00:00 BC", types.String("0044-03-15 00:00:00 BC")},
		{"timestamp past 9999 stays text", 1184, "10000-01-01 00:00:00+00", types.String("10000-01-01 00:00:00+00")},
		{"impossible date stays text", 1082, "2023-02-30", types.String("2023-02-30")},
		{"bytea", 17, `\x00ff`, types.Bytes{0, 0xff}},
		{"int4[]", 1007, "{1,2,-3}", list(types.Int(1), types.Int(2), types.Int(-3))},
		{"int8[] with NULL", 1016, "{1,NULL}", list(types.Int(1), types.NullValue)},
		{"int4[] 2-D", 1007, "{{1,2},{3,4}}", list(list(types.Int(1), types.Int(2)), list(types.Int(3), types.Int(4)))},
		{"int4[] lower bound", 1007, "[0:1]={5,6}", list(types.Int(5), types.Int(6))},
		{"empty array", 1009, "{}", list()},
		{"text[] quoted", 1009, `{a,"b c","say \"hi\"","NULL",""}`, list(types.String("a"), types.String("b c"), types.String(`say "hi"`), types.String("NULL"), types.String(""))},
		{"bool[]", 1000, "{t,f}", list(types.True, types.False)},
		{"uuid[]", 2951, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", list(types.String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))},
		{"timestamptz[]", 1185, `{"2024-01-01 00:00:00+00"}`, list(ts("2024-01-01T00:00:00Z"))},
		{"malformed array stays text", 1007, "{1,2", types.String("{1,2")},
		{"json number and null", 114, `[1, null, "x"]`, list(types.Double(1), types.NullValue, types.String("x"))},
		{"invalid json stays text", 3802, `{"a"`, types.String(`{"a"`)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := convert(tc.oid, []byte(tc.text)); !equal(got, tc.want) {
				t.Errorf("convert(%d, %q) = %v (%T), want %v (%T)", tc.oid, tc.text, got, got, tc.want, tc.want)
			}
		})
	}
}

func TestRowValues(t *testing.T) {
	t.Parallel()
	rel := &change.Relation{Schema: "public", Name: "orders", Columns: []change.Column{
		{Name: "id", TypeOID: 20, Key: true},
		{Name: "tenant_id", TypeOID: 25},
		{Name: "note", TypeOID: 25},
		{Name: "body", TypeOID: 25},
		{Name: "meta", TypeOID: 3802},
	}}
	row := change.Row{
		{Kind: change.Text, Text: []byte("7")},
		{Kind: change.Text, Text: []byte("acme")},
		{Kind: change.Null},
		{Kind: change.Unchanged},
		{Kind: change.Text, Text: []byte(`{"tags":["a","b"],"n":{"x":1.5}}`)},
	}
	m := RowValues(rel, row)
	if len(m) != 4 {
		t.Errorf("RowValues() = %v, want 4 columns (the unchanged one absent)", m)
	}
	if _, ok := m["body"]; ok {
		t.Errorf("RowValues()[body] = %v, want absent", m["body"])
	}
	if m["note"] != types.NullValue || m["id"] != types.Int(7) || m["tenant_id"] != types.String("acme") {
		t.Errorf("RowValues() = %v, want id 7, tenant_id acme, note null", m)
	}

	// The JSON column is read by rules as nested maps and lists.
	r, ps := Compile(Rule, "public.orders", "tables[0].acl", "'b' in row.meta.tags && row.meta.n.x > 1 && row.note == null && row.id == 7", 1)
	if len(ps) > 0 {
		t.Fatalf("Compile() = %v", ps)
	}
	if ok, err := r.Bool(&Input{Op: change.Insert, New: m}, map[string]any{"id": types.String("u")}); !ok || err != nil {
		t.Errorf("Allow(json rule) = %v, %v; want true", ok, err)
	}
}

func TestInputFor(t *testing.T) {
	t.Parallel()
	rel := &change.Relation{Schema: "public", Name: "orders", Columns: []change.Column{
		{Name: "id", TypeOID: 20, Key: true},
		{Name: "body", TypeOID: 25},
	}}
	ch := &change.Change{
		Relation: rel,
		Op:       change.Update,
		New:      change.Row{{Kind: change.Text, Text: []byte("1")}, {Kind: change.Unchanged}},
		Old:      change.Row{{Kind: change.Text, Text: []byte("1")}, {Kind: change.Text, Text: []byte("big")}},
	}
	in := InputFor(ch, "/acme")
	if in.Table != "public.orders" || in.Site != "/acme" || in.Op != change.Update {
		t.Errorf("InputFor() = %+v, want table public.orders, site /acme, update", in)
	}
	if in.New["body"] != types.String("big") {
		t.Errorf("InputFor().New[body] = %v, want the old row's value for an unchanged column", in.New["body"])
	}

	ch.Old = nil
	if in := InputFor(ch, ""); in.Old != nil || len(in.New) != 1 {
		t.Errorf("InputFor(no old row) = %+v, want nil Old and body absent from New", in)
	}
}

func TestValue(t *testing.T) {
	t.Parallel()
	when := time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))
	tests := []struct {
		name string
		in   any
		want ref.Val
	}{
		{"nil", nil, types.NullValue},
		{"int32", int32(5), types.Int(5)},
		{"uint32", uint32(5), types.Int(5)},
		{"huge uint64", uint64(math.MaxUint64), types.Uint(math.MaxUint64)},
		{"float32", float32(0.5), types.Double(0.5)},
		{"string", "x", types.String("x")},
		{"time", when, types.Timestamp{Time: when.UTC()}},
		{"uuid bytes", [16]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11},
			types.String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")},
		{"[]any", []any{"a", int64(1)}, list(types.String("a"), types.Int(1))},
		{"[]string", []string{"a"}, list(types.String("a"))},
		{"[]int32 by reflection", []int32{1, 2}, list(types.Int(1), types.Int(2))},
		{"CEL value", types.True, types.True},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Value(tc.in); !equal(got, tc.want) {
				t.Errorf("Value(%v) = %v (%T), want %v (%T)", tc.in, got, got, tc.want, tc.want)
			}
		})
	}
}

func FuzzConvert(f *testing.F) {
	for _, s := range []string{"{1,2}", `{"a\"",NULL}`, "[1:2]={1,2}", "2024-01-01 00:00:00+00", "1e5", `{"a":[1]}`, `\x0f`} {
		f.Add(uint32(1007), s)
	}
	oids := []uint32{20, 701, 1700, 16, 1184, 1114, 1082, 3802, 17, 1007, 1009, 1000, 1185}
	f.Fuzz(func(t *testing.T, oid uint32, text string) {
		// Any text of any type converts to some value; it never panics.
		for _, o := range append(oids, oid) {
			if v := convert(o, []byte(text)); v == nil {
				t.Fatalf("convert(%d, %q) = nil", o, text)
			}
		}
	})
}

// TestRowValuesByBaseType: a column whose type the stream resolved from the
// catalog (a domain, an enum array) is read as its base type.
func TestRowValuesByBaseType(t *testing.T) {
	t.Parallel()
	rel := &change.Relation{Schema: "public", Name: "orders", Columns: []change.Column{
		{Name: "qty", TypeOID: 16390, Base: 23},
		{Name: "moods", TypeOID: 16401, Base: 1009},
		{Name: "pair", TypeOID: 16405},
	}}
	row := change.Row{
		{Kind: change.Text, Text: []byte("3")},
		{Kind: change.Text, Text: []byte("{sad,happy}")},
		{Kind: change.Text, Text: []byte("(1,a)")},
	}
	m := RowValues(rel, row)
	if m["qty"] != types.Int(3) || m["pair"] != types.String("(1,a)") {
		t.Fatalf("RowValues() = %v, want qty 3 and pair as text", m)
	}
	r, ps := Compile(Rule, "public.orders", "tables[0].acl", "row.qty > 2 && 'happy' in row.moods", 1)
	if len(ps) > 0 {
		t.Fatalf("Compile() = %v", ps)
	}
	if ok, err := r.Bool(&Input{Op: change.Insert, New: m}, map[string]any{"id": types.String("u")}); !ok || err != nil {
		t.Fatalf("Allow(domain and enum array rule) = %v, %v; want true", ok, err)
	}
}

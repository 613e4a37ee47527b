package mapping

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/internal/change"
)

// rawEnc stands in for a numeric encoder: the text form is already JSON.
func rawEnc(dst, text []byte) []byte { return append(dst, text...) }

func ordersRel() *change.Relation {
	return &change.Relation{ID: 16384, Schema: "public", Name: "orders", ReplicaIdentity: 'd', Columns: []change.Column{
		{Name: "id", TypeOID: 20, Key: true, Enc: rawEnc},
		{Name: "tenant_path", TypeOID: 25},
		{Name: "status", TypeOID: 25},
		{Name: "total", TypeOID: 1700, Enc: rawEnc},
		{Name: "internal_note", TypeOID: 25},
	}}
}

func txt(s string) change.Datum { return change.Datum{Kind: change.Text, Text: []byte(s)} }

var (
	null      = change.Datum{Kind: change.Null}
	unchanged = change.Datum{Kind: change.Unchanged}
)

var testTx = &change.Tx{Source: "7319845236418901234/shop", XID: 700, CommitLSN: pglogrepl.LSN(0x16B3748), EndLSN: pglogrepl.LSN(0x16B3778), CommitTime: time.Unix(1700000000, 0)}

func mustMapper(tb testing.TB, yaml string) *Mapper {
	tb.Helper()
	cfg, err := Parse("walhook.yaml", []byte(yaml))
	if err != nil {
		tb.Fatalf("Parse() error: %v", err)
	}
	m, err := New(cfg)
	if err != nil {
		tb.Fatalf("New() error: %v", err)
	}
	return m
}

const ordersYAML = `tables:
  - table: public.orders
    noun: order
    site: tenant_path
    acl: "true"
    events:
      - name: order.paid
        on: update
        when: new.status == 'paid' && old.status != 'paid'
`

func withVerbs(verbs string) string {
	return strings.Replace(ordersYAML, "    acl:", "    verbs: "+verbs+"\n    acl:", 1)
}

func TestMap(t *testing.T) {
	row := change.Row{txt("1"), txt("/acme"), txt("paid"), txt("9.50"), null}
	tests := []struct {
		name string
		yaml string
		rel  *change.Relation
		op   change.Op
		want []string
	}{
		{name: "insert", yaml: ordersYAML, op: change.Insert, want: []string{"order.created"}},
		{name: "update without derived events", yaml: ordersYAML, op: change.Update, want: []string{"order.updated"}},
		{name: "delete", yaml: ordersYAML, op: change.Delete, want: []string{"order.deleted"}},
		{name: "custom verb", yaml: withVerbs("{insert: placed, delete: cancelled}"), op: change.Insert, want: []string{"order.placed"}},
		{name: "verb omitted from verbs", yaml: withVerbs("{insert: placed, delete: cancelled}"), op: change.Update, want: nil},
		{name: "verb set to empty", yaml: withVerbs(`{insert: created, update: ""}`), op: change.Update, want: nil},
		{name: "verb set to null", yaml: withVerbs(`{insert: created, delete: ~}`), op: change.Delete, want: nil},
		{name: "empty verbs, derived events only", yaml: withVerbs("{}"), op: change.Insert, want: nil},
		{name: "multi-part verb", yaml: withVerbs("{update: status.changed}"), op: change.Update, want: []string{"order.status.changed"}},
		{
			name: "unmapped relation",
			yaml: ordersYAML,
			rel:  &change.Relation{Schema: "public", Name: "line_items", Columns: ordersRel().Columns},
			op:   change.Insert,
			want: nil,
		},
		{
			name: "same name in another schema",
			yaml: ordersYAML,
			rel:  &change.Relation{Schema: "archive", Name: "orders", Columns: ordersRel().Columns},
			op:   change.Insert,
			want: nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mustMapper(t, tc.yaml)
			rel := tc.rel
			if rel == nil {
				rel = ordersRel()
			}
			ch := &change.Change{Relation: rel, Op: tc.op, Tx: testTx, Seq: 3}
			if tc.op == change.Delete {
				ch.Old = row
			} else {
				ch.New = row
			}
			prior := Event{Name: "prior"}
			got := m.Map([]Event{prior}, ch)
			if got[0].Name != prior.Name || got[0].Change != nil {
				t.Fatalf("Map() dropped dst[0]: %v", got)
			}
			var names []string
			for _, e := range got[1:] {
				names = append(names, e.Name)
				if want := EventID(testTx.Source, testTx.CommitLSN, 3, e.Name); e.ID != want {
					t.Fatalf("Map() id = %s, want EventID() = %s", e.ID, want)
				}
				if e.Change != ch || e.Table == nil || e.Table.Name != "public.orders" {
					t.Fatalf("Map() = %+v, want the change and table public.orders", e)
				}
			}
			if !slices.Equal(names, tc.want) {
				t.Fatalf("Map() = %v, want %v", names, tc.want)
			}
		})
	}
}

func TestMapperTablesAndEvents(t *testing.T) {
	m := mustMapper(t, ordersYAML+`  - table: app.customers
    noun: customer
    verbs: {insert: signed_up}
    acl: "true"
`)
	if got, want := m.Tables(), []string{"app.customers", "public.orders"}; !slices.Equal(got, want) {
		t.Fatalf("Tables() = %v, want %v", got, want)
	}
	want := []EventInfo{
		{Name: "customer.existing", Table: "app.customers", Op: "existing"},
		{Name: "customer.signed_up", Table: "app.customers", Op: "insert"},
		{Name: "order.created", Table: "public.orders", Op: "insert"},
		{Name: "order.deleted", Table: "public.orders", Op: "delete"},
		{Name: "order.existing", Table: "public.orders", Op: "existing"},
		{Name: "order.paid", Table: "public.orders", Op: "update", Derived: true},
		{Name: "order.updated", Table: "public.orders", Op: "update"},
	}
	if got := m.Events(); !slices.Equal(got, want) {
		t.Fatalf("Events() = %v, want %v", got, want)
	}
	if tb := m.Table("public.orders"); tb == nil || tb.Noun != "order" || len(tb.Derived) != 1 || tb.Derived[0].Name != "order.paid" {
		t.Fatalf("Table(public.orders) = %+v, want noun order with derived order.paid", tb)
	}
	if tb := m.Table("public.customers"); tb != nil {
		t.Fatalf("Table(public.customers) = %+v, want nil", tb)
	}
}

func TestNewChecksTables(t *testing.T) {
	tests := []struct {
		name string
		cfg  *Config
		want string
	}{
		{name: "nil config", cfg: nil, want: "new mapper: nil config"},
		{
			name: "config built in code",
			cfg: &Config{File: "code", Tables: []*TableConfig{
				{Table: "orders", Noun: "order", ACL: "true", Verbs: map[string]string{"upsert": "saved"}},
			}},
			want: `code: tables[0].table: "orders" is not schema-qualified (want schema.table, e.g. public.orders)` + "\n" +
				`code: tables[0].verbs.upsert: unknown operation "upsert" (want insert, update, delete, truncate or existing)`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(tc.cfg)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("New() = %v, %v; want error %q", m, err, tc.want)
			}
		})
	}
	// A nil Verbs map in code means the defaults, as an absent verbs: does.
	m, err := New(&Config{Tables: []*TableConfig{{Table: "public.orders", Noun: "order", ACL: "true"}}})
	if err != nil {
		t.Fatalf("New() error: %v", err)
	}
	// Three verbs and the backfill's order.existing.
	if got := len(m.Events()); got != 4 {
		t.Fatalf("len(Events()) = %d, want 4", got)
	}
}

func TestAppendData(t *testing.T) {
	full := change.Row{txt("1"), txt("/acme"), txt("paid"), txt("9.50"), txt("call back")}
	tests := []struct {
		name    string
		columns string // the columns: setting
		row     change.Row
		fill    change.Row
		want    string
	}{
		{
			name: "all columns",
			row:  full,
			want: `{"id":1,"tenant_path":"/acme","status":"paid","total":9.50,"internal_note":"call back"}`,
		},
		{
			name: "null",
			row:  change.Row{txt("1"), null, txt("new"), null, null},
			want: `{"id":1,"tenant_path":null,"status":"new","total":null,"internal_note":null}`,
		},
		{
			name:    "exclude",
			columns: "{exclude: [internal_note, tenant_path]}",
			row:     full,
			want:    `{"id":1,"status":"paid","total":9.50}`,
		},
		{
			name:    "include",
			columns: "{include: [total, id]}",
			row:     full,
			want:    `{"id":1,"total":9.50}`,
		},
		{
			name: "unchanged TOAST filled from old row",
			row:  change.Row{txt("1"), txt("/acme"), txt("paid"), txt("9.50"), unchanged},
			fill: change.Row{txt("1"), txt("/acme"), txt("new"), txt("9.50"), txt("long note")},
			want: `{"id":1,"tenant_path":"/acme","status":"paid","total":9.50,"internal_note":"long note"}`,
		},
		{
			name: "unchanged TOAST without fill is left out",
			row:  change.Row{txt("1"), txt("/acme"), txt("paid"), txt("9.50"), unchanged},
			want: `{"id":1,"tenant_path":"/acme","status":"paid","total":9.50}`,
		},
		{
			name: "unchanged TOAST with key-only old row is left out",
			row:  change.Row{txt("1"), unchanged, txt("paid"), txt("9.50"), unchanged},
			fill: change.Row{txt("1"), unchanged, unchanged, unchanged, unchanged},
			want: `{"id":1,"status":"paid","total":9.50}`,
		},
		{
			name: "unchanged first column keeps the commas right",
			row:  change.Row{unchanged, unchanged, txt("paid"), unchanged, txt("x")},
			want: `{"status":"paid","internal_note":"x"}`,
		},
		{
			name: "every column unchanged",
			row:  change.Row{unchanged, unchanged, unchanged, unchanged, unchanged},
			want: `{}`,
		},
		{
			name: "short row and short fill",
			row:  change.Row{txt("1"), unchanged},
			fill: change.Row{txt("1")},
			want: `{"id":1}`,
		},
		{
			name: "strings are escaped",
			row:  change.Row{txt("1"), txt("/a\"b\\c"), txt("tab\there\nnew\x01line"), txt("0"), txt("bad \xff utf8")},
			want: `{"id":1,"tenant_path":"/a\"b\\c","status":"tab\there\nnew\u0001line","total":0,"internal_note":"bad ` + "\ufffd" + ` utf8"}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			yaml := ordersYAML
			if tc.columns != "" {
				yaml = strings.Replace(yaml, "    acl:", "    columns: "+tc.columns+"\n    acl:", 1)
			}
			m := mustMapper(t, yaml)
			got := string(m.Table("public.orders").AppendData([]byte("x="), ordersRel(), tc.row, tc.fill))
			if want := "x=" + tc.want; got != want {
				t.Fatalf("AppendData() = %s, want %s", got, want)
			}
			if !json.Valid([]byte(tc.want)) {
				t.Fatalf("want %s is not valid JSON", tc.want)
			}
		})
	}
}

// TestAppendDataRelationChange checks the per-relation cache follows DDL:
// the stream hands out a new Relation and the filter must be rebuilt for it.
func TestAppendDataRelationChange(t *testing.T) {
	m := mustMapper(t, strings.Replace(ordersYAML, "    acl:", "    columns: {exclude: [internal_note]}\n    acl:", 1))
	tb := m.Table("public.orders")
	rel1 := ordersRel()
	row1 := change.Row{txt("1"), txt("/a"), txt("new"), txt("1"), txt("secret")}
	want1 := `{"id":1,"tenant_path":"/a","status":"new","total":1}`

	// ALTER TABLE: a column dropped, one added, the excluded one moved.
	rel2 := &change.Relation{ID: 16384, Schema: "public", Name: "orders", Columns: []change.Column{
		{Name: "id", Key: true, Enc: rawEnc}, {Name: "internal_note"}, {Name: "status"}, {Name: "currency"},
	}}
	row2 := change.Row{txt("2"), txt("secret"), txt("paid"), txt("EUR")}
	want2 := `{"id":2,"status":"paid","currency":"EUR"}`

	for i := range 3 {
		if got := string(tb.AppendData(nil, rel1, row1, nil)); got != want1 {
			t.Fatalf("round %d: AppendData(rel1) = %s, want %s", i, got, want1)
		}
		if got := string(tb.AppendData(nil, rel2, row2, nil)); got != want2 {
			t.Fatalf("round %d: AppendData(rel2) = %s, want %s", i, got, want2)
		}
	}
	// An in-place replacement of the Columns slice is noticed as well.
	rel1.Columns = rel2.Columns
	if got := string(tb.AppendData(nil, rel1, row2, nil)); got != want2 {
		t.Fatalf("AppendData(rel1 with rel2's columns) = %s, want %s", got, want2)
	}
}

func TestSite(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		op   change.Op
		new  change.Row
		old  change.Row
		want string
	}{
		{name: "insert", op: change.Insert, new: change.Row{txt("1"), txt("/acme/east")}, want: "/acme/east"},
		{name: "trailing slash", op: change.Insert, new: change.Row{txt("1"), txt("/acme/east/")}, want: "/acme/east"},
		{name: "no leading slash", op: change.Insert, new: change.Row{txt("1"), txt("acme//east")}, want: "/acme/east"},
		{name: "dot segments", op: change.Insert, new: change.Row{txt("1"), txt("/acme/./west/../east")}, want: "/acme/east"},
		{name: "root", op: change.Insert, new: change.Row{txt("1"), txt("/")}, want: "/"},
		{name: "null", op: change.Insert, new: change.Row{txt("1"), null}, want: "/"},
		{name: "empty", op: change.Insert, new: change.Row{txt("1"), txt("")}, want: "/"},
		{name: "absent from row", op: change.Insert, new: change.Row{txt("1")}, want: "/"},
		{name: "delete uses old row", op: change.Delete, old: change.Row{txt("1"), txt("/acme/west")}, want: "/acme/west"},
		{name: "update uses new row", op: change.Update, new: change.Row{txt("1"), txt("/b")}, old: change.Row{txt("1"), txt("/a")}, want: "/b"},
		{name: "unchanged TOAST falls back to old row", op: change.Update, new: change.Row{txt("1"), unchanged}, old: change.Row{txt("1"), txt("/a")}, want: "/a"},
		{name: "unchanged TOAST without old row", op: change.Update, new: change.Row{txt("1"), unchanged}, want: "/"},
		{name: "no site column configured", yaml: strings.Replace(ordersYAML, "    site: tenant_path\n", "", 1), op: change.Insert, new: change.Row{txt("1"), txt("/acme")}, want: "/"},
		{name: "site column missing from relation", yaml: strings.Replace(ordersYAML, "site: tenant_path", "site: region", 1), op: change.Insert, new: change.Row{txt("1"), txt("/acme")}, want: "/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			yaml := tc.yaml
			if yaml == "" {
				yaml = ordersYAML
			}
			m := mustMapper(t, yaml)
			ch := &change.Change{Relation: ordersRel(), Op: tc.op, New: tc.new, Old: tc.old, Tx: testTx}
			if got := m.Table("public.orders").Site(ch); got != tc.want {
				t.Fatalf("Site() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCleanSite(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "/"}, {"/", "/"}, {"//", "/"}, {"a", "/a"}, {"/a/", "/a"}, {"/a//b", "/a/b"}, {"/../a", "/a"}, {"/a/b/..", "/a"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			if got := CleanSite(tc.in); got != tc.want {
				t.Fatalf("CleanSite(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

var uuidV8 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestEventID(t *testing.T) {
	// Pinned: ids must not change between releases, or a replay after an
	// upgrade would look like new events to receivers.
	const golden = "5a6e5e1b-c268-81a2-9fb5-08b7b1a4c125" // computed independently in Python
	got := EventID("7319845236418901234/shop", 0x16B3748, 0, "order.created")
	if got != EventID("7319845236418901234/shop", 0x16B3748, 0, "order.created") {
		t.Fatalf("EventID() is not deterministic")
	}
	if got != golden {
		t.Fatalf("EventID(7319845236418901234/shop, 0x16B3748, 0, order.created) = %s, want %s", got, golden)
	}
	tests := []struct {
		name string
		src  string
		lsn  pglogrepl.LSN
		seq  uint32
		ev   string
	}{
		{"base", "a/shop", 0x16B3748, 0, "order.created"},
		{"other database", "a/shop2", 0x16B3748, 0, "order.created"},
		{"other cluster", "b/shop", 0x16B3748, 0, "order.created"},
		{"next lsn", "a/shop", 0x16B3749, 0, "order.created"},
		{"next seq", "a/shop", 0x16B3748, 1, "order.created"},
		{"other event", "a/shop", 0x16B3748, 0, "order.paid"},
		{"lsn and seq bytes do not run together", "a/shop", 0x16B3748 << 8, 0, "order.created"},
		{"source and lsn do not run together", "a/sho", 0x16B3748, 0, "order.created"},
		{"zero", "", 0, 0, ""},
		{"long name", "a/shop", 1, 1, strings.Repeat("order.x", 40)},
	}
	seen := map[string]string{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := EventID(tc.src, tc.lsn, tc.seq, tc.ev)
			if !uuidV8.MatchString(id) {
				t.Fatalf("EventID() = %s, want a version 8 UUID", id)
			}
			if prev, dup := seen[id]; dup {
				t.Fatalf("EventID() = %s for both %q and %q", id, prev, tc.name)
			}
			seen[id] = tc.name
		})
	}
}

// FuzzParse checks Parse never panics, and that whatever it accepts New
// compiles: the two run the same table checks.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../testdata/config/*.yaml")
	files = append(files, examplePath)
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(ordersYAML))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		if _, err := New(cfg); err != nil {
			t.Fatalf("Parse() accepted a config New() refuses: %v", err)
		}
	})
}

// TestConcurrentUse runs Map, AppendData and Site from many goroutines while
// the relation changes, for the race detector.
func TestConcurrentUse(t *testing.T) {
	m := mustMapper(t, ordersYAML)
	tb := m.Table("public.orders")
	rels := []*change.Relation{ordersRel(), ordersRel()}
	row := change.Row{txt("1"), txt("/acme"), txt("paid"), txt("9.50"), txt("note")}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			var dst []Event
			var buf []byte
			for i := range 200 {
				ch := &change.Change{Relation: rels[(g+i)%2], Op: change.Insert, New: row, Tx: testTx, Seq: uint32(i)}
				dst = m.Map(dst[:0], ch)
				buf = tb.AppendData(buf[:0], ch.Relation, row, nil)
				if len(dst) != 1 || tb.Site(ch) != "/acme" || !json.Valid(buf) {
					t.Errorf("goroutine %d: Map() = %v, AppendData() = %s", g, dst, buf)
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkMap(b *testing.B) {
	m := mustMapper(b, ordersYAML)
	ch := &change.Change{Relation: ordersRel(), Op: change.Update, New: change.Row{txt("1"), txt("/acme"), txt("paid"), txt("9.50"), null}, Tx: testTx}
	dst := make([]Event, 0, 4)
	b.ReportAllocs()
	for b.Loop() {
		dst = m.Map(dst[:0], ch)
	}
	if len(dst) != 1 {
		b.Fatalf("Map() = %v, want one event", dst)
	}
}

func BenchmarkAppendData(b *testing.B) {
	m := mustMapper(b, strings.Replace(ordersYAML, "    acl:", "    columns: {exclude: [internal_note]}\n    acl:", 1))
	tb := m.Table("public.orders")
	rel := ordersRel()
	row := change.Row{txt("12345"), txt("/acme/east"), unchanged, txt("1234.50"), txt("note")}
	fill := change.Row{txt("12345"), txt("/acme/east"), txt("shipped \"fast\""), txt("1234.50"), txt("note")}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = tb.AppendData(buf[:0], rel, row, fill)
	}
	b.SetBytes(int64(len(buf)))
}

func TestExistingEvent(t *testing.T) {
	tests := []struct {
		name, verbs, want string
	}{
		{name: "default verbs", verbs: "", want: "order.existing"},
		{name: "verbs without existing", verbs: "    verbs: {insert: created}\n", want: "order.existing"},
		{name: "renamed", verbs: "    verbs: {insert: created, existing: current}\n", want: "order.current"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mustMapper(t, "tables:\n  - table: public.orders\n    noun: order\n    acl: \"true\"\n"+tc.verbs)
			if got := m.Table("public.orders").Existing; got != tc.want {
				t.Fatalf("Existing = %q, want %q", got, tc.want)
			}
			if !slices.ContainsFunc(m.Events(), func(e EventInfo) bool { return e.Name == tc.want && e.Op == VerbExisting }) {
				t.Fatalf("Events() = %v, want %s offered", m.Events(), tc.want)
			}
		})
	}
}

func TestBackfillEventID(t *testing.T) {
	id := BackfillEventID(7, "public.orders", "42", "order.existing")
	if again := BackfillEventID(7, "public.orders", "42", "order.existing"); again != id {
		t.Fatalf("BackfillEventID() = %s then %s, want the same", id, again)
	}
	for _, other := range []string{
		BackfillEventID(8, "public.orders", "42", "order.existing"),
		BackfillEventID(7, "public.orders", "43", "order.existing"),
		BackfillEventID(7, "public.order", "s\x0042", "order.existing"),
	} {
		if other == id {
			t.Fatalf("BackfillEventID() = %s for another backfill or row", id)
		}
	}
	if len(id) != 36 || id[14] != '8' {
		t.Fatalf("BackfillEventID() = %s, want a version 8 UUID", id)
	}
}

func TestExistingEventClash(t *testing.T) {
	_, err := Parse("walhook.yaml", []byte(`tables:
  - table: public.orders
    noun: order
    acl: "true"
    events:
      - name: order.existing
        on: update
        when: "true"
`))
	if err == nil || !strings.Contains(err.Error(), "order.existing") {
		t.Fatalf("Parse() error = %v, want order.existing named twice", err)
	}
}

// TestTruncateVerb: truncate is off by default and produces <noun>.<verb>
// once `verbs:` names it; a truncate change of such a table maps to one
// event with an id from the commit, position and name, at site "/".
func TestTruncateVerb(t *testing.T) {
	trunc := &change.Change{Relation: ordersRel(), Op: change.Truncate, Tx: testTx, Seq: 3}
	tests := []struct {
		name, verbs string
		want        string // the truncate event; "" for none
	}{
		{name: "default verbs", verbs: "", want: ""},
		{name: "verbs without truncate", verbs: "    verbs: {insert: created, delete: deleted}\n", want: ""},
		{name: "truncate named", verbs: "    verbs: {insert: created, truncate: truncated}\n", want: "order.truncated"},
		{name: "truncate only", verbs: "    verbs: {truncate: emptied}\n", want: "order.emptied"},
		{name: "truncate mapped to nothing", verbs: "    verbs: {insert: created, truncate: \"\"}\n", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := mustMapper(t, "tables:\n  - table: public.orders\n    noun: order\n    site: tenant_path\n    acl: \"true\"\n"+tc.verbs)
			if got := m.Truncates(); got != (tc.want != "") {
				t.Fatalf("Truncates() = %v, want %v", got, tc.want != "")
			}
			got := m.Map(nil, trunc)
			if tc.want == "" {
				if len(got) != 0 {
					t.Fatalf("Map(truncate) = %v, want no event", got)
				}
				return
			}
			if len(got) != 1 || got[0].Name != tc.want {
				t.Fatalf("Map(truncate) = %v, want one %s", got, tc.want)
			}
			if want := EventID(testTx.Source, testTx.CommitLSN, 3, tc.want); got[0].ID != want {
				t.Fatalf("event id = %s, want %s", got[0].ID, want)
			}
			if !slices.ContainsFunc(m.Events(), func(e EventInfo) bool { return e.Name == tc.want && e.Op == VerbTruncate }) {
				t.Fatalf("Events() = %v, want %s offered", m.Events(), tc.want)
			}
			tb := m.Table("public.orders")
			if site := tb.Site(trunc); site != "/" {
				t.Fatalf("Site(truncate) = %q, want /", site)
			}
			if data := string(tb.AppendData(nil, trunc.Relation, trunc.New, trunc.Old)); data != "{}" {
				t.Fatalf("AppendData(truncate) = %s, want {}", data)
			}
		})
	}
}

// TestTruncateVerbErrors: a misspelt truncate is refused at its file:line
// and field; truncate is not an operation a derived
// event may watch.
func TestTruncateVerbErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{
			name: "typo",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: \"true\"\n    verbs:\n      insert: created\n      trunacte: truncated\n",
			want: `walhook.yaml:7: tables[0].verbs.trunacte: unknown operation "trunacte" (want insert, update, delete, truncate or existing)`,
		},
		{
			name: "clash",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: \"true\"\n    verbs: {insert: created, truncate: created}\n",
			want: `walhook.yaml:5: tables[0].verbs.truncate: event "order.created" is already produced by tables[0].verbs.insert (line 5); event names must be unique`,
		},
		{
			name: "derived on truncate",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: \"true\"\n    verbs: {truncate: truncated}\n    events:\n      - name: order.wiped\n        on: truncate\n        when: \"true\"\n",
			want: `walhook.yaml:8: tables[0].events[0].on: unknown operation "truncate" (want insert, update or delete)`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("walhook.yaml", []byte(tc.yaml))
			if err == nil || err.Error() != tc.want {
				t.Fatalf("Parse() error = %v, want %s", err, tc.want)
			}
		})
	}
}

package acl

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"cel.dev/cel-go/common/types"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/expr"
	"github.com/walhook/walhook/mapping"
)

// parse parses a config from YAML text, failing the test on config errors.
func parse(tb testing.TB, yaml string) *mapping.Config {
	tb.Helper()
	cfg, err := mapping.Parse("walhook.yaml", []byte(yaml))
	if err != nil {
		tb.Fatalf("Parse() = %v", err)
	}
	return cfg
}

// tablesOf lists cfg's acl rules, as walhook does.
func tablesOf(cfg *mapping.Config) []Table {
	var out []Table
	for i, t := range cfg.Tables {
		line := t.ACLLine
		if line == 0 {
			line = t.Line
		}
		out = append(out, Table{Name: t.Table, Rule: t.ACL, Line: line, Field: "tables[" + strconv.Itoa(i) + "].acl"})
	}
	return out
}

// compileYAML parses and compiles a config, failing the test on errors.
func compileYAML(tb testing.TB, yaml string) *Rules {
	tb.Helper()
	cfg := parse(tb, yaml)
	r, err := Compile(cfg.File, tablesOf(cfg))
	if err != nil {
		tb.Fatalf("Compile() = %v", err)
	}
	return r
}

const ordersYAML = `tables:
  - table: public.orders
    noun: order
    acl: row.tenant_id in owner.tenants || owner.admin
    events:
      - name: order.paid
        on: update
        when: new.status == 'paid' && old.status != 'paid'
  - table: public.notes
    noun: note
    acl: owner.?admin.orValue(false) || row.author == owner.id
`

func TestCompileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		// want are substrings of the single error expected, which must
		// start with "walhook.yaml:<line>: <field>: ".
		want []string
	}{
		{
			name: "misspelled variable",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: rwo.tenant_id in owner.tenants\n",
			want: []string{"walhook.yaml:4: tables[0].acl: ", "column 1: undeclared reference to 'rwo'", "the variables are row, new, old"},
		},
		{
			name: "type error",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: op == 1\n",
			want: []string{"walhook.yaml:4: tables[0].acl: ", "found no matching overload for '_==_' applied to '(string, int)'"},
		},
		{
			name: "non-bool result",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: size(owner.tenants)\n",
			want: []string{"walhook.yaml:4: tables[0].acl: ", "gives int, not a bool"},
		},
		{
			name: "string result",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: \"'yes'\"\n",
			want: []string{"walhook.yaml:4: tables[0].acl: ", "gives string, not a bool"},
		},
		{
			name: "bad syntax",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: row.tenant_id in (owner.tenants\n",
			want: []string{"walhook.yaml:4: tables[0].acl: ", "Syntax error"},
		},
		{
			name: "bad syntax on the second line of a literal block",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: |\n      owner.admin ||\n        row.tenant_id in in owner.tenants\n",
			want: []string{"walhook.yaml:6: tables[0].acl: ", "Syntax error"},
		},
		{
			name: "nested comprehensions",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: owner.groups.exists(g, row.acl.exists(a, row.x.exists(b, a == g && b == a)))\n",
			want: []string{"walhook.yaml:4: tables[0].acl: ", "too costly", "more than 1000000"},
		},
		{
			name: "bad regex literal",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n    acl: row.name.matches('[')\n",
			want: []string{"walhook.yaml:4: tables[0].acl: ", "invalid matches argument"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := parse(t, tc.yaml)
			_, err := Compile(cfg.File, tablesOf(cfg))
			var errs mapping.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Compile() = %v, want mapping.Errors", err)
			}
			if len(errs) != 1 {
				t.Fatalf("Compile() = %d errors:\n%v\nwant 1", len(errs), err)
			}
			msg := errs[0].Error()
			if !strings.HasPrefix(msg, tc.want[0]) {
				t.Errorf("Compile() = %q, want prefix %q", msg, tc.want[0])
			}
			for _, w := range tc.want[1:] {
				if !strings.Contains(msg, w) {
					t.Errorf("Compile() = %q, want it to contain %q", msg, w)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("Compile() = %q, want one line per problem", msg)
			}
		})
	}
}

func TestCompileReportsEveryProblem(t *testing.T) {
	t.Parallel()
	yaml := "tables:\n" +
		"  - table: public.a\n    noun: a\n    acl: nope\n" +
		"  - table: public.b\n    noun: b\n    acl: 1 + 1\n"
	cfg := parse(t, yaml)
	_, err := Compile(cfg.File, tablesOf(cfg))
	var errs mapping.Errors
	if !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("Compile() = %v, want 2 errors", err)
	}
	if errs[0].Field != "tables[0].acl" || errs[0].Line != 4 || errs[1].Field != "tables[1].acl" || errs[1].Line != 7 {
		t.Errorf("Compile() = %v, want tables[0].acl at 4 and tables[1].acl at 7", err)
	}
}

func TestCompileMissingACL(t *testing.T) {
	t.Parallel()
	// Parse refuses a missing acl already; a Config built in code must be
	// refused here too.
	_, err := Compile("code.yaml", []Table{{Name: "public.orders", Line: 7, Field: "tables[0].acl"}})
	var errs mapping.Errors
	if !errors.As(err, &errs) || len(errs) != 1 {
		t.Fatalf("Compile() = %v, want 1 error", err)
	}
	if got, want := errs[0].Error(), "code.yaml:7: tables[0].acl: required"; !strings.HasPrefix(got, want) {
		t.Errorf("Compile() = %q, want prefix %q", got, want)
	}
}

// owner returns owner attributes as Owners.Get would.
func owner(id string, attrs map[string]any) map[string]any {
	m := map[string]any{"id": types.String(id)}
	for k, v := range attrs {
		m[k] = expr.Value(v)
	}
	return m
}

func TestAllow(t *testing.T) {
	t.Parallel()
	r := compileYAML(t, ordersYAML+`  - table: public.docs
    noun: doc
    acl: old == null || old.tenant_id in owner.tenants
  - table: public.sites
    noun: place
    acl: site.startsWith('/acme') && table == 'public.sites' && op != 'delete'
`)
	acme := owner("u1", map[string]any{"tenants": []string{"acme"}, "admin": false})
	admin := owner("root", map[string]any{"tenants": []string{}, "admin": true})
	other := owner("u2", map[string]any{"tenants": []string{"globex"}, "admin": false})
	noAdmin := owner("u3", map[string]any{"tenants": []string{"acme"}})

	acmeRow := map[string]any{"id": types.Int(1), "tenant_id": types.String("acme"), "author": types.String("u2")}
	tests := []struct {
		name    string
		table   string
		in      *Input
		owner   map[string]any
		want    bool
		wantErr bool
	}{
		{"tenant member", "public.orders", &Input{Op: change.Insert, New: acmeRow}, acme, true, false},
		{"other tenant", "public.orders", &Input{Op: change.Insert, New: acmeRow}, other, false, false},
		{"admin override", "public.orders", &Input{Op: change.Insert, New: acmeRow}, admin, true, false},
		{"input table checked", "public.orders", &Input{Op: change.Insert, Table: "public.orders", New: acmeRow}, acme, true, false},
		{"delete judged on old row", "public.orders", &Input{Op: change.Delete, Old: acmeRow}, acme, true, false},
		{"delete of another tenant's row", "public.orders", &Input{Op: change.Delete, Old: acmeRow}, other, false, false},
		{"update judged on new row", "public.orders", &Input{Op: change.Update,
			New: map[string]any{"tenant_id": types.String("globex")}, Old: acmeRow}, acme, false, false},
		{"null old on insert", "public.docs", &Input{Op: change.Insert, New: acmeRow}, other, true, false},
		{"old row on update", "public.docs", &Input{Op: change.Update, New: acmeRow, Old: acmeRow}, other, false, false},
		{"optional attribute missing", "public.notes", &Input{Op: change.Insert, New: acmeRow}, noAdmin, false, false},
		{"optional attribute set", "public.notes", &Input{Op: change.Insert, New: acmeRow}, admin, true, false},
		{"owner id", "public.notes", &Input{Op: change.Insert, New: acmeRow}, other, true, false},
		{"site, table and op", "public.sites", &Input{Op: change.Insert, Site: "/acme/east", New: acmeRow}, other, true, false},
		{"site of another", "public.sites", &Input{Op: change.Insert, Site: "/globex", New: acmeRow}, other, false, false},
		{"missing attribute not reached", "public.orders", &Input{Op: change.Insert, New: acmeRow}, noAdmin, true, false},
		{"missing attribute denies when reached", "public.orders", &Input{Op: change.Insert,
			New: map[string]any{"tenant_id": types.String("initech")}}, noAdmin, false, true},
		{"missing column denies", "public.orders", &Input{Op: change.Insert, New: map[string]any{"id": types.Int(1)}}, acme, false, true},
		{"delete without old row denies", "public.orders", &Input{Op: change.Delete}, acme, false, true},
		{"nil owner denies", "public.orders", &Input{Op: change.Insert, New: acmeRow}, nil, false, true},
		{"unknown table", "public.nope", &Input{Op: change.Insert, New: acmeRow}, acme, false, true},
		{"wrong input table", "public.orders", &Input{Op: change.Insert, Table: "public.notes", New: acmeRow}, acme, false, true},
		{"bad op", "public.orders", &Input{New: acmeRow}, acme, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := r.Allow(tc.table, tc.in, tc.owner)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Fatalf("Allow() = %v, %v; want %v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestAllowErrors(t *testing.T) {
	t.Parallel()
	r := compileYAML(t, ordersYAML+"  - table: public.flags\n    noun: flag\n    acl: row.public\n")
	tests := []struct {
		name   string
		table  string
		in     *Input
		target error
		text   string
	}{
		{"unknown table", "public.nope", &Input{Op: change.Insert}, ErrUnknownTable, "public.nope"},
		{"wrong table", "public.orders", &Input{Op: change.Insert, Table: "public.notes"}, ErrWrongTable, "public.notes"},
		{"bad op", "public.orders", &Input{}, ErrBadOp, "tables[0].acl"},
		{"dyn result not a bool", "public.flags", &Input{Op: change.Insert, New: map[string]any{"public": types.String("yes")}}, ErrNotBool, "tables[2].acl"},
		{"missing key", "public.orders", &Input{Op: change.Insert, New: map[string]any{}}, nil, "evaluate tables[0].acl: no such key: tenant_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ok, err := r.Allow(tc.table, tc.in, owner("u1", map[string]any{"tenants": []string{"acme"}}))
			if ok || err == nil {
				t.Fatalf("Allow() = %v, %v; want false and an error", ok, err)
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("Allow() error = %v, want %v", err, tc.target)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("Allow() error = %q, want it to contain %q", err, tc.text)
			}
		})
	}
}

func TestAllowMany(t *testing.T) {
	t.Parallel()
	r := compileYAML(t, ordersYAML)
	owners := map[string]map[string]any{
		"u1":   owner("u1", map[string]any{"tenants": []string{"acme"}, "admin": false}),
		"u2":   owner("u2", map[string]any{"tenants": []string{"globex"}, "admin": false}),
		"root": owner("root", map[string]any{"tenants": []string{}, "admin": true}),
		"bad":  owner("bad", map[string]any{"tenants": []string{}}),
	}
	dst := map[string]bool{"stale": true}
	in := &Input{Op: change.Insert, New: map[string]any{"tenant_id": types.String("acme")}}
	failed, err := r.AllowMany("public.orders", in, owners, dst)
	want := map[string]bool{"u1": true, "u2": false, "root": true, "bad": false}
	if failed != 1 || err == nil || !strings.Contains(err.Error(), "owner bad: ") {
		t.Errorf("AllowMany() = %d, %v; want 1, an error naming owner bad", failed, err)
	}
	if len(dst) != len(want) {
		t.Errorf("AllowMany() verdicts = %v, want %v", dst, want)
	}
	for id, w := range want {
		if dst[id] != w {
			t.Errorf("AllowMany() verdicts = %v, want %v", dst, want)
			break
		}
	}
	if failed, err := r.AllowMany("public.nope", in, owners, dst); failed != len(owners) || !errors.Is(err, ErrUnknownTable) || len(dst) != 0 {
		t.Errorf("AllowMany(unknown table) = %d, %v, %v; want %d, ErrUnknownTable, no verdicts", failed, err, dst, len(owners))
	}
}

func TestNeedsFullIdentity(t *testing.T) {
	t.Parallel()
	r := compileYAML(t, `tables:
  - table: public.open
    noun: open
    acl: 'true'
  - table: public.owned
    noun: owned
    acl: owner.admin || op == 'insert'
  - table: public.orders
    noun: order
    acl: row.tenant_id in owner.tenants || row['region'] == owner.region
  - table: public.whole
    noun: whole
    acl: size(row) > 0
`)
	tests := []struct {
		table string
		want  bool
		cols  []string
		all   bool
	}{
		{"public.open", false, nil, false},
		{"public.owned", false, nil, false},
		{"public.orders", true, []string{"region", "tenant_id"}, false},
		{"public.whole", true, nil, true},
		{"public.unknown", false, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.table, func(t *testing.T) {
			t.Parallel()
			if got := r.NeedsFullIdentity(tc.table); got != tc.want {
				t.Errorf("NeedsFullIdentity(%s) = %v, want %v", tc.table, got, tc.want)
			}
			cols, all := r.OldColumns(tc.table)
			if !slices.Equal(cols, tc.cols) || all != tc.all {
				t.Errorf("OldColumns(%s) = %v, %v; want %v, %v", tc.table, cols, all, tc.cols, tc.all)
			}
		})
	}
}

func TestAllowConcurrent(t *testing.T) {
	t.Parallel()
	// Pooled activations must not leak one goroutine's row or owner into
	// another's evaluation; run under -race.
	r := compileYAML(t, ordersYAML)
	acme := owner("u1", map[string]any{"tenants": []string{"acme"}, "admin": false})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			tenant := "acme"
			if g%2 == 1 {
				tenant = "globex"
			}
			in := &Input{Op: change.Insert, Site: tenant, New: map[string]any{"tenant_id": types.String(tenant)}}
			for range 2000 {
				ok, err := r.Allow("public.orders", in, acme)
				if err != nil || ok != (tenant == "acme") {
					t.Errorf("Allow(%s) = %v, %v; want %v", tenant, ok, err, tenant == "acme")
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestRuntimeCostLimit(t *testing.T) {
	t.Parallel()
	// Within the estimate for lists of AssumedSize, far beyond it for lists
	// of 5,000: the evaluation stops and denies instead of looping 25 million
	// times.
	r := compileYAML(t, "tables:\n  - table: public.docs\n    noun: doc\n    acl: owner.groups.exists(g, row.acl.exists(a, a == g))\n")
	big := make([]any, 5000)
	for i := range big {
		big[i] = int64(i)
	}
	in := &Input{Op: change.Insert, New: map[string]any{"acl": expr.Value(big)}}
	ok, err := r.Allow("public.docs", in, owner("u", map[string]any{"groups": []any{int64(-1), int64(-2), int64(-3), int64(-4)}}))
	if ok || err != nil {
		t.Fatalf("Allow(small owner) = %v, %v; want false, no error", ok, err)
	}
	ok, err = r.Allow("public.docs", in, owner("u", map[string]any{"groups": big[:0:0]}))
	if ok || err != nil {
		t.Fatalf("Allow(no groups) = %v, %v; want false, no error", ok, err)
	}
	neg := make([]any, 5000)
	for i := range neg {
		neg[i] = int64(-i - 1)
	}
	ok, err = r.Allow("public.docs", in, owner("u", map[string]any{"groups": neg}))
	if ok || err == nil || !strings.Contains(err.Error(), "cost") {
		t.Fatalf("Allow(5,000 × 5,000) = %v, %v; want false and a cost limit error", ok, err)
	}
}

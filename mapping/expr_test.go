package mapping

import (
	"strings"
	"testing"

	"cel.dev/cel-go/common/types"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/expr"
)

// compile parses and compiles yaml, failing the test on any error.
func compile(t *testing.T, yaml string) *Mapper {
	t.Helper()
	cfg, err := Parse("walhook.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("Parse() = %v", err)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return m
}

func derived(t *testing.T, m *Mapper, table, name string) (*Table, *DerivedEvent) {
	t.Helper()
	tab := m.Table(table)
	for _, d := range tab.Derived {
		if d.Name == name {
			return tab, d
		}
	}
	t.Fatalf("no derived event %s in %s", name, table)
	return nil, nil
}

func TestExpressionCompileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, want string
	}{
		{"when misspelled", "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    events:\n      - name: order.shipped\n        on: update\n        when: true\n      - name: order.paid\n        on: update\n        when: new.staus == 'paid' && odl.status != 'paid'\n",
			"walhook.yaml:11: tables[0].events[1].when: column 24: undeclared reference to 'odl'"},
		{"when reads owner", "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    events:\n      - name: order.paid\n        on: update\n        when: owner.admin\n",
			"the variables are row, new, old, op, table, site"},
		{"payload not a map", "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    payload: '\"x\"'\n",
			"walhook.yaml:5: tables[0].payload: gives string, not a map"},
		{"payload reads owner", "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    payload: '{\"o\": owner.id}'\n",
			"walhook.yaml:5: tables[0].payload: column 7: undeclared reference to 'owner'"},
		{"payload syntax", "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    payload: '{\"a\": }'\n",
			"walhook.yaml:5: tables[0].payload: column"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := Parse("walhook.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatalf("Parse() = %v", err)
			}
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWhen(t *testing.T) {
	t.Parallel()
	m := compile(t, `tables:
  - table: public.orders
    noun: order
    acl: 'true'
    events:
      - name: order.paid
        on: update
        when: new.status == 'paid' && old.status != 'paid'
  - table: public.invoices
    noun: invoice
    acl: 'true'
    events:
      - name: invoice.voided
        on: delete
        when: row.status == 'void' && new == null && op == 'delete'
`)
	status := func(s string) map[string]any { return map[string]any{"id": types.Int(1), "status": types.String(s)} }
	tests := []struct {
		name    string
		table   string
		event   string
		in      *expr.Input
		want    bool
		wantErr bool
	}{
		{"becomes paid", "public.orders", "order.paid", &expr.Input{Op: change.Update, New: status("paid"), Old: status("open")}, true, false},
		{"stays paid", "public.orders", "order.paid", &expr.Input{Op: change.Update, New: status("paid"), Old: status("paid")}, false, false},
		{"not paid", "public.orders", "order.paid", &expr.Input{Op: change.Update, New: status("open"), Old: status("new")}, false, false},
		{"no old row", "public.orders", "order.paid", &expr.Input{Op: change.Update, New: status("paid")}, false, true},
		{"old row without the column", "public.orders", "order.paid", &expr.Input{Op: change.Update, New: status("paid"), Old: map[string]any{"id": types.Int(1)}}, false, true},
		{"other op", "public.orders", "order.paid", &expr.Input{Op: change.Insert, New: status("paid")}, false, false},
		{"delete sees old row as row", "public.invoices", "invoice.voided", &expr.Input{Op: change.Delete, Old: status("void")}, true, false},
		{"wrong input table", "public.orders", "order.paid", &expr.Input{Op: change.Update, Table: "public.invoices", New: status("paid"), Old: status("open")}, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tab, d := derived(t, m, tc.table, tc.event)
			got, err := tab.When(d, tc.in)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Fatalf("When() = %v, %v; want %v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
	if cols, all := m.OldColumns("public.orders"); all || len(cols) != 1 || cols[0] != "status" {
		t.Errorf("OldColumns(public.orders) = %v, %v; want [status], false", cols, all)
	}
}

func TestPayload(t *testing.T) {
	t.Parallel()
	m := compile(t, "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n"+
		"    payload: '{\"id\": row.id, \"paid\": row.status == \"paid\", \"when\": timestamp(\"2024-01-01T00:00:00Z\")}'\n"+
		"  - table: public.plain\n    noun: plain\n    acl: 'true'\n")
	rel := &change.Relation{Schema: "public", Name: "orders", Columns: []change.Column{
		{Name: "id", TypeOID: 20, Key: true}, {Name: "status", TypeOID: 25}}}
	ch := &change.Change{Relation: rel, Op: change.Insert, New: change.Row{
		{Kind: change.Text, Text: []byte("7")}, {Kind: change.Text, Text: []byte("paid")}}}
	orders, plain := m.Table("public.orders"), m.Table("public.plain")
	got, err := orders.Payload(expr.InputFor(ch, "/"))
	if want := `{"id":7,"paid":true,"when":"2024-01-01T00:00:00Z"}`; err != nil || string(got) != want {
		t.Fatalf("Payload() = %s, %v; want %s", got, err, want)
	}
	if !orders.HasPayload() || plain.HasPayload() {
		t.Fatal("HasPayload() wrong")
	}
	if got, err := plain.Payload(expr.InputFor(ch, "/")); got != nil || err != nil {
		t.Fatalf("Payload() without an expression = %s, %v; want nil, nil", got, err)
	}
	// A column that was not sent makes the expression fail, not invent null.
	ch.New[1].Kind = change.Unchanged
	if _, err := orders.Payload(expr.InputFor(ch, "/")); err == nil {
		t.Fatal("Payload() over a missing column succeeded, want an error")
	}
}

package acl

import (
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/change"
)

func TestPayloadCompileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, payload, want string
	}{
		{"not a map", `"x"`, `walhook.yaml:5: tables[0].payload: gives string, not a map`},
		{"reads owner", `{"o": owner.id}`, `walhook.yaml:5: tables[0].payload: column 7: undeclared reference to 'owner'`},
		{"syntax", `{"a": }`, `walhook.yaml:5: tables[0].payload: column`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			yaml := "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n    payload: '" + tc.payload + "'\n"
			_, err := Compile(parse(t, yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Compile() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestPayload(t *testing.T) {
	t.Parallel()
	r := compileYAML(t, "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n"+
		"    payload: '{\"id\": row.id, \"paid\": row.status == \"paid\", \"when\": timestamp(\"2024-01-01T00:00:00Z\")}'\n"+
		"  - table: public.plain\n    noun: plain\n    acl: 'true'\n")
	rel := &change.Relation{Schema: "public", Name: "orders", Columns: []change.Column{
		{Name: "id", TypeOID: 20, Key: true}, {Name: "status", TypeOID: 25}}}
	ch := &change.Change{Relation: rel, Op: change.Insert, New: change.Row{
		{Kind: change.Text, Text: []byte("7")}, {Kind: change.Text, Text: []byte("paid")}}}
	got, err := r.Payload("public.orders", InputFor(ch, "/"))
	if want := `{"id":7,"paid":true,"when":"2024-01-01T00:00:00Z"}`; err != nil || string(got) != want {
		t.Fatalf("Payload() = %s, %v; want %s", got, err, want)
	}
	if !r.HasPayload("public.orders") || r.HasPayload("public.plain") {
		t.Fatal("HasPayload() wrong")
	}
	if got, err := r.Payload("public.plain", InputFor(ch, "/")); got != nil || err != nil {
		t.Fatalf("Payload() without an expression = %s, %v; want nil, nil", got, err)
	}
	// A column that was not sent makes the expression fail, not invent null.
	ch.New[1].Kind = change.Unchanged
	if _, err := r.Payload("public.orders", InputFor(ch, "/")); err == nil {
		t.Fatal("Payload() over a missing column succeeded, want an error")
	}
}

package cdc

import (
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/internal/change"
)

// TestBuildEncoder builds encoders from catalog rows as lookupTypes returns
// them, without a server.
func TestBuildEncoder(t *testing.T) {
	types := map[uint32]*pgType{
		100: {OID: 100, Name: "public.posint", Kind: 'd', Base: pgtype.Int4OID, Delim: ','},
		101: {OID: 101, Name: "public.qty", Kind: 'd', Base: 100, Delim: ','},
		102: {OID: 102, Name: "public._qty", Kind: 'b', Elem: 101, Delim: ','},
		103: {OID: 103, Name: "public.mood", Kind: 'e', Delim: ','},
		104: {OID: 104, Name: "public._mood", Kind: 'b', Elem: 103, Delim: ','},
		105: {OID: 105, Name: "public.pair", Kind: 'c', Delim: ',', Fields: []pgField{{"n", 101}, {"m", 104}}},
		106: {OID: 106, Name: "public._pair", Kind: 'b', Elem: 105, Delim: ','},
		107: {OID: 107, Name: "public.semi", Kind: 'b', Delim: ';'},
		108: {OID: 108, Name: "public._semi", Kind: 'b', Elem: 107, Delim: ','},
		109: {OID: 109, Name: "public.span", Kind: 'r', Delim: ','},
		110: {OID: 110, Name: "public.broken", Kind: 'c', Delim: ',', Fields: []pgField{{"x", 999}}},
		111: {OID: 111, Name: "public.loop", Kind: 'd', Base: 111, Delim: ','},
	}
	tests := []struct {
		name   string
		oid    uint32
		in     string
		want   string
		wantOK bool
	}{
		{"domain over domain over int", 101, "5", `5`, true},
		{"array of domain", 102, "{1,NULL}", `[1,null]`, true},
		{"enum", 103, "sad", `"sad"`, true},
		{"enum array", 104, "{sad,ok}", `["sad","ok"]`, true},
		{"composite", 105, `(1,"{sad,""o k""}")`, `{"n":1,"m":["sad","o k"]}`, true},
		{"array of composites", 106, `{"(1,{sad})",NULL}`, `[{"n":1,"m":["sad"]},null]`, true},
		{"element delimiter", 108, "{a;b}", `["a","b"]`, true},
		{"range", 109, "[1,2)", `"[1,2)"`, true},
		{"built in", pgtype.BoolOID, "t", `true`, true},
		{"missing", 999, "x", `"x"`, false},
		{"composite with a missing field type", 110, "(1)", `{"x":"1"}`, false},
		{"cycle", 111, "1", `"1"`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			built := map[uint32]change.Encoder{}
			enc, ok := buildEncoder(tc.oid, types, built, 0)
			if got := enc(nil, []byte(tc.in)); string(got) != tc.want || ok != tc.wantOK {
				t.Fatalf("buildEncoder(%d)(%q) = %s, %v; want %s, %v", tc.oid, tc.in, got, ok, tc.want, tc.wantOK)
			}
			// Only what the catalog described completely is kept.
			_, builtin := change.BuiltinEncoder(tc.oid)
			if _, memo := built[tc.oid]; memo != (ok && !builtin) {
				t.Fatalf("buildEncoder(%d) memoised = %v, want %v", tc.oid, memo, ok && !builtin)
			}
		})
	}
}

// TestBaseType: the built-in type rules read a column's values as.
func TestBaseType(t *testing.T) {
	types := map[uint32]*pgType{
		pgtype.Int4OID:     {OID: pgtype.Int4OID, Kind: 'b', Delim: ',', Array: pgtype.Int4ArrayOID},
		pgtype.BoxOID:      {OID: pgtype.BoxOID, Kind: 'b', Delim: ';', Array: pgtype.BoxArrayOID},
		pgtype.BoxArrayOID: {OID: pgtype.BoxArrayOID, Kind: 'b', Elem: pgtype.BoxOID, Delim: ','},
		16400:              {OID: 16400, Kind: 'd', Base: pgtype.Int4OID, Delim: ',', Array: 16500},
		16401:              {OID: 16401, Kind: 'd', Base: 16400, Delim: ',', Array: 16501},
		16402:              {OID: 16402, Kind: 'b', Elem: 16401, Delim: ','},
		16403:              {OID: 16403, Kind: 'e', Delim: ',', Array: 16404},
		16404:              {OID: 16404, Kind: 'b', Elem: 16403, Delim: ','},
		16405:              {OID: 16405, Kind: 'c', Delim: ',', Fields: []pgField{{"n", 16401}}, Array: 16406},
		16406:              {OID: 16406, Kind: 'b', Elem: 16405, Delim: ','},
		16407:              {OID: 16407, Kind: 'd', Base: pgtype.Int4ArrayOID, Elem: pgtype.Int4OID, Delim: ','},
		16408:              {OID: 16408, Kind: 'b', Delim: ','}, // an extension's base type
	}
	tests := []struct {
		name string
		oid  uint32
		want uint32
	}{
		{"built in", pgtype.Int4OID, pgtype.Int4OID},
		{"built-in array of a type without an encoder", pgtype.BoxArrayOID, pgtype.BoxArrayOID},
		{"domain over domain over int", 16401, pgtype.Int4OID},
		{"array of domain", 16402, pgtype.Int4ArrayOID},
		{"enum", 16403, pgtype.TextOID},
		{"enum array", 16404, pgtype.TextArrayOID},
		{"composite", 16405, 0},
		{"array of composites", 16406, 0},
		{"domain over an array", 16407, pgtype.Int4ArrayOID},
		{"extension type", 16408, 0},
		{"missing", 16999, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := baseType(tc.oid, types, 0); got != tc.want {
				t.Fatalf("baseType(%d) = %d, want %d", tc.oid, got, tc.want)
			}
		})
	}
}

// TestFits: which rows make the stream look a composite type up again.
func TestFits(t *testing.T) {
	checks := []fieldCheck{{col: 1, fields: 2}, {col: 2, fields: 1}}
	text := func(s string) change.Datum { return change.Datum{Kind: change.Text, Text: []byte(s)} }
	null := change.Datum{Kind: change.Null}
	tests := []struct {
		name string
		row  change.Row
		want bool
	}{
		{"matching", change.Row{text("1"), text("(1,a)"), text("(x)")}, true},
		{"nulls and one NULL field", change.Row{text("1"), null, text("()")}, true},
		{"unchanged", change.Row{text("1"), {Kind: change.Unchanged}, null}, true},
		{"no row", nil, true},
		{"malformed is left to the encoder", change.Row{text("1"), text("(1"), null}, true},
		{"one more field", change.Row{text("1"), text("(1,a,)"), null}, false},
		{"one fewer field", change.Row{text("1"), text("(1)"), null}, false},
		{"second check", change.Row{text("1"), text("(1,a)"), text("(x,y)")}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := fits(checks, tc.row); got != tc.want {
				t.Fatalf("fits(%v) = %v, want %v", tc.row, got, tc.want)
			}
		})
	}
}

package change

import (
	"reflect"
	"testing"
	"time"
)

func TestFreezeThaw(t *testing.T) {
	rel := &Relation{ID: 42, Schema: "public", Name: "orders", ReplicaIdentity: 'f', Columns: []Column{
		{Name: "id", TypeOID: 20, Key: true}, {Name: "note", TypeOID: 25}, {Name: "blob", TypeOID: 17},
	}}
	tx := &Tx{Source: "7/shop", XID: 9, CommitLSN: 0x1000, CommitTime: time.Date(2026, 12, 2, 1, 2, 3, 4000, time.UTC)}
	tests := []struct {
		name string
		ch   *Change
	}{
		{"insert", &Change{Relation: rel, Op: Insert, Tx: tx, Seq: 3, New: Row{
			{Kind: Text, Text: []byte("1")}, {Kind: Null}, {Kind: Text, Text: []byte("\\x00ff\"")}}}},
		{"update with old row and unsent value", &Change{Relation: rel, Op: Update, Tx: tx, Seq: 4,
			Old: Row{{Kind: Text, Text: []byte("1")}, {Kind: Text, Text: []byte("é ✓")}, {Kind: Unchanged}},
			New: Row{{Kind: Text, Text: []byte("1")}, {Kind: Text, Text: []byte("")}, {Kind: Unchanged}}}},
		{"delete", &Change{Relation: rel, Op: Delete, Tx: tx, Old: Row{{Kind: Text, Text: []byte("1")}, {Kind: Unchanged}, {Kind: Unchanged}}}},
		{"truncate, no rows", &Change{Relation: rel, Op: Truncate, Tx: tx, Seq: 5}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Freeze(tc.ch, []string{"/acme"})
			if err != nil {
				t.Fatal(err)
			}
			got, sites, err := Thaw(b)
			if err != nil {
				t.Fatalf("Thaw(%s) = %v", b, err)
			}
			if !reflect.DeepEqual(sites, []string{"/acme"}) {
				t.Fatalf("sites = %q", sites)
			}
			if got.Op != tc.ch.Op || got.Seq != tc.ch.Seq || !reflect.DeepEqual(*got.Tx, *tc.ch.Tx) {
				t.Fatalf("Thaw() = %+v tx %+v, want %+v tx %+v", got, got.Tx, tc.ch, tc.ch.Tx)
			}
			if !reflect.DeepEqual(got.New, tc.ch.New) || !reflect.DeepEqual(got.Old, tc.ch.Old) {
				t.Fatalf("rows = %v / %v, want %v / %v", got.New, got.Old, tc.ch.New, tc.ch.Old)
			}
			if got.Relation.QualifiedName() != "public.orders" || got.Relation.ID != 42 || got.Relation.ReplicaIdentity != 'f' ||
				len(got.Relation.Columns) != 3 || got.Relation.Columns[2].TypeOID != 17 || !got.Relation.Columns[0].Key {
				t.Fatalf("relation = %+v", got.Relation)
			}
		})
	}
	for _, bad := range []string{`{`, `{"op":"upsert"}`, `{"op":"insert","columns":[{"name":"a"}],"new":[]}`,
		`{"op":"insert","columns":[{"name":"a"}],"new":[{"k":"t"}]}`, `{"op":"insert","commit_lsn":"zz"}`} {
		if _, _, err := Thaw([]byte(bad)); err == nil {
			t.Errorf("Thaw(%s) = nil error, want one", bad)
		}
	}
}

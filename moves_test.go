package walhook

import (
	"slices"
	"testing"

	"github.com/walhook/walhook/internal/change"
)

func TestPairKey(t *testing.T) {
	tests := []struct {
		name             string
		key, pk, partKey []string
		want             []string
	}{
		{name: "primary key less the partition key", pk: []string{"id", "region"}, partKey: []string{"region"}, want: []string{"id"}},
		{name: "key: wins over the primary key", key: []string{"sku"}, pk: []string{"id", "region"}, partKey: []string{"region"}, want: []string{"sku"}},
		{name: "every level's partition key", pk: []string{"id", "region", "day"}, partKey: []string{"region", "day"}, want: []string{"id"}},
		{name: "only partition key columns", key: []string{"day"}, partKey: []string{"day"}, want: nil},
		{name: "no key", partKey: []string{"day"}, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := pairKey(tc.key, tc.pk, tc.partKey); !slices.Equal(got, tc.want) {
				t.Fatalf("pairKey() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMovePairerPair(t *testing.T) {
	rel := &change.Relation{ID: 7, Schema: "public", Name: "items", Columns: []change.Column{
		{Name: "id", TypeOID: 20}, {Name: "region", TypeOID: 25}, {Name: "name", TypeOID: 25}}}
	// The same shape sent again in another RELATION message.
	again := &change.Relation{ID: 7, Schema: "public", Name: "items", Columns: slices.Clone(rel.Columns)}
	altered := &change.Relation{ID: 7, Schema: "public", Name: "items", Columns: append(slices.Clone(rel.Columns), change.Column{Name: "x", TypeOID: 25})}
	row := func(vals ...string) change.Row {
		r := make(change.Row, len(vals))
		for i, v := range vals {
			switch v {
			case "NULL":
				r[i] = change.Datum{Kind: change.Null}
			case "?":
				r[i] = change.Datum{Kind: change.Unchanged}
			default:
				r[i] = change.Datum{Kind: change.Text, Text: []byte(v)}
			}
		}
		return r
	}
	tx := &change.Tx{}
	del := &change.Change{Relation: rel, Op: change.Delete, Old: row("1", "eu", "a"), Tx: tx, Seq: 3}
	p := &movePairer{cols: map[uint32][]string{7: {"id"}}}
	tests := []struct {
		name string
		del  *change.Change
		ins  *change.Change
		pair bool
	}{
		{name: "same key, other partition", del: del, ins: &change.Change{Relation: rel, Op: change.Insert, New: row("1", "us", "a"), Tx: tx, Seq: 4}, pair: true},
		{name: "relation sent again", del: del, ins: &change.Change{Relation: again, Op: change.Insert, New: row("1", "us", "b"), Tx: tx, Seq: 4}, pair: true},
		{name: "other key", del: del, ins: &change.Change{Relation: rel, Op: change.Insert, New: row("2", "us", "a"), Tx: tx, Seq: 4}},
		{name: "other shape", del: del, ins: &change.Change{Relation: altered, Op: change.Insert, New: row("1", "us", "a", "x"), Tx: tx, Seq: 4}},
		{name: "key not sent", del: &change.Change{Relation: rel, Op: change.Delete, Old: row("?", "eu", "a"), Tx: tx, Seq: 3},
			ins: &change.Change{Relation: rel, Op: change.Insert, New: row("1", "us", "a"), Tx: tx, Seq: 4}},
		{name: "null key", del: &change.Change{Relation: rel, Op: change.Delete, Old: row("NULL", "eu", "a"), Tx: tx, Seq: 3},
			ins: &change.Change{Relation: rel, Op: change.Insert, New: row("NULL", "us", "a"), Tx: tx, Seq: 4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := p.pair(tc.del, tc.ins)
			if (up != nil) != tc.pair {
				t.Fatalf("pair() = %v, want paired %v", up, tc.pair)
			}
			if up == nil {
				return
			}
			if up.Op != change.Update || up.Seq != tc.del.Seq || up.Relation != tc.ins.Relation ||
				string(up.Old[1].Text) != "eu" || string(up.New[1].Text) != "us" {
				t.Fatalf("pair() = %+v, want an update at the delete's position from the deleted row to the inserted one", up)
			}
		})
	}
}

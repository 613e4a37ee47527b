package cdc

import (
	"encoding/binary"
	"testing"

	"github.com/walhook/walhook/internal/change"
)

func testRelation() relations {
	rel := &change.Relation{ID: 7, Schema: "public", Name: "t", Columns: []change.Column{
		{Name: "id", TypeOID: 23, Key: true},
		{Name: "body", TypeOID: 25},
	}}
	return relations{7: rel}
}

// tuple builds pgoutput TupleData: each column is "n", "u" or a text value.
func tuple(cols ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, c := range cols {
		switch c {
		case "n", "u":
			b = append(b, c[0])
		default:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(c)))
			b = append(b, c...)
		}
	}
	return b
}

func msg(relID uint32, parts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, relID)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestDecodeRowChange(t *testing.T) {
	tests := []struct {
		name     string
		typ      byte
		src      []byte
		wantOp   change.Op
		wantNew  []change.Kind
		wantOld  []change.Kind
		wantText string // body of new (or old) row
		wantErr  bool
	}{
		{name: "insert", typ: 'I', src: msg(7, []byte{'N'}, tuple("1", "hello")), wantOp: change.Insert, wantNew: []change.Kind{change.Text, change.Text}, wantText: "hello"},
		{name: "insert null", typ: 'I', src: msg(7, []byte{'N'}, tuple("1", "n")), wantOp: change.Insert, wantNew: []change.Kind{change.Text, change.Null}},
		{name: "update toast unchanged", typ: 'U', src: msg(7, []byte{'N'}, tuple("1", "u")), wantOp: change.Update, wantNew: []change.Kind{change.Text, change.Unchanged}},
		{name: "update with full old", typ: 'U', src: msg(7, []byte{'O'}, tuple("1", "old"), []byte{'N'}, tuple("1", "new")), wantOp: change.Update, wantOld: []change.Kind{change.Text, change.Text}, wantNew: []change.Kind{change.Text, change.Text}, wantText: "new"},
		{name: "delete key only: non-key NULL means not sent", typ: 'D', src: msg(7, []byte{'K'}, tuple("1", "n")), wantOp: change.Delete, wantOld: []change.Kind{change.Text, change.Unchanged}},
		{name: "delete full: NULL is NULL", typ: 'D', src: msg(7, []byte{'O'}, tuple("1", "n")), wantOp: change.Delete, wantOld: []change.Kind{change.Text, change.Null}},
		{name: "unknown relation", typ: 'I', src: msg(8, []byte{'N'}, tuple("1", "x")), wantErr: true},
		{name: "column count mismatch", typ: 'I', src: msg(7, []byte{'N'}, tuple("1")), wantErr: true},
		{name: "truncated value", typ: 'I', src: msg(7, []byte{'N'}, tuple("1", "hello"))[:15], wantErr: true},
		{name: "bad marker", typ: 'I', src: msg(7, []byte{'X'}, tuple("1", "x")), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ch change.Change
			err := decodeRowChange(tc.typ, tc.src, testRelation(), &ch)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("decodeRowChange() = nil error, want one")
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeRowChange() error = %v", err)
			}
			if ch.Op != tc.wantOp {
				t.Fatalf("Op = %v, want %v", ch.Op, tc.wantOp)
			}
			check := func(what string, row change.Row, want []change.Kind) {
				if len(row) != len(want) {
					t.Fatalf("%s = %v, want kinds %v", what, row, want)
				}
				for i := range want {
					if row[i].Kind != want[i] {
						t.Fatalf("%s[%d].Kind = %c, want %c", what, i, row[i].Kind, want[i])
					}
				}
			}
			check("New", ch.New, tc.wantNew)
			check("Old", ch.Old, tc.wantOld)
			row := ch.New
			if row == nil {
				row = ch.Old
			}
			if tc.wantText != "" && string(row[1].Text) != tc.wantText {
				t.Fatalf("body = %q, want %q", row[1].Text, tc.wantText)
			}
		})
	}
}

func FuzzDecodeRowChange(f *testing.F) {
	f.Add(byte('I'), msg(7, []byte{'N'}, tuple("1", "hello")))
	f.Add(byte('U'), msg(7, []byte{'O'}, tuple("1", "old"), []byte{'N'}, tuple("1", "u")))
	f.Add(byte('D'), msg(7, []byte{'K'}, tuple("1", "n")))
	f.Fuzz(func(t *testing.T, typ byte, src []byte) {
		var ch change.Change
		if err := decodeRowChange(typ, src, testRelation(), &ch); err != nil {
			return
		}
		for _, row := range []change.Row{ch.New, ch.Old} {
			if row != nil && len(row) != 2 {
				t.Fatalf("decoded row of %d columns for a 2-column relation", len(row))
			}
		}
	})
}

package change

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// frozen is a Change as JSON, for a change walhook holds instead of
// delivering (walhook.held.change): enough to route it again later, with
// whatever config is current then. Values keep pgoutput's text form.
type frozen struct {
	Schema   string         `json:"schema"`
	Table    string         `json:"table"`
	RelID    uint32         `json:"relation_id"`
	Identity string         `json:"replica_identity"`
	Columns  []frozenColumn `json:"columns"`
	Op       string         `json:"op"`
	New      []frozenDatum  `json:"new,omitempty"`
	Old      []frozenDatum  `json:"old,omitempty"`
	Source   string         `json:"source"`
	XID      uint32         `json:"xid"`
	Commit   string         `json:"commit_lsn"`
	End      string         `json:"end_lsn,omitempty"`
	Time     time.Time      `json:"committed_at"`
	Seq      uint32         `json:"seq"`
	Sites    []string       `json:"sites,omitempty"`
}

type frozenColumn struct {
	Name string `json:"name"`
	OID  uint32 `json:"type_oid"`
	Key  bool   `json:"key,omitempty"`
}

// frozenDatum is one value: kind n (NULL), u (not sent) or t (text in V).
type frozenDatum struct {
	K string  `json:"k"`
	V *string `json:"v,omitempty"`
}

// Freeze encodes ch, and the active sites its transaction set before it, as
// JSON.
func Freeze(ch *Change, sites []string) ([]byte, error) {
	rel := ch.Relation
	f := frozen{Schema: rel.Schema, Table: rel.Name, RelID: rel.ID, Identity: string(rune(rel.ReplicaIdentity)),
		Op: ch.Op.String(), Seq: ch.Seq, Sites: sites}
	if rel.ReplicaIdentity == 0 {
		f.Identity = ""
	}
	for _, c := range rel.Columns {
		f.Columns = append(f.Columns, frozenColumn{Name: c.Name, OID: c.TypeOID, Key: c.Key})
	}
	f.New, f.Old = freezeRow(ch.New), freezeRow(ch.Old)
	if tx := ch.Tx; tx != nil {
		f.Source, f.XID, f.Time = tx.Source, tx.XID, tx.CommitTime
		// Not EndLSN: the stream sets it at the commit, which may come while
		// a change of the transaction is being held.
		f.Commit = tx.CommitLSN.String()
	}
	return json.Marshal(f)
}

func freezeRow(row Row) []frozenDatum {
	if row == nil {
		return nil
	}
	out := make([]frozenDatum, len(row))
	for i, d := range row {
		out[i].K = string(rune(d.Kind))
		if d.Kind == Text {
			v := string(d.Text)
			out[i].V = &v
		}
	}
	return out
}

// Thaw decodes what Freeze encoded: the change, with a relation and
// transaction of its own, and the active sites.
func Thaw(b []byte) (*Change, []string, error) {
	var f frozen
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, nil, fmt.Errorf("decode held change: %w", err)
	}
	rel := &Relation{ID: f.RelID, Schema: f.Schema, Name: f.Table}
	if f.Identity != "" {
		rel.ReplicaIdentity = f.Identity[0]
	}
	for _, c := range f.Columns {
		rel.Columns = append(rel.Columns, Column{Name: c.Name, TypeOID: c.OID, Key: c.Key, Enc: EncoderFor(c.OID)})
	}
	ch := &Change{Relation: rel, Op: ParseOp(f.Op), Seq: f.Seq, Tx: &Tx{Source: f.Source, XID: f.XID, CommitTime: f.Time}}
	if ch.Op == 0 {
		return nil, nil, fmt.Errorf("decode held change: unknown op %q", f.Op)
	}
	var err error
	if ch.Tx.CommitLSN, err = parseLSN(f.Commit); err != nil {
		return nil, nil, err
	}
	if ch.Tx.EndLSN, err = parseLSN(f.End); err != nil {
		return nil, nil, err
	}
	if ch.New, err = thawRow(f.New, len(rel.Columns)); err != nil {
		return nil, nil, err
	}
	if ch.Old, err = thawRow(f.Old, len(rel.Columns)); err != nil {
		return nil, nil, err
	}
	return ch, f.Sites, nil
}

func parseLSN(s string) (pglogrepl.LSN, error) {
	if s == "" {
		return 0, nil
	}
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("decode held change: %w", err)
	}
	return l, nil
}

func thawRow(in []frozenDatum, n int) (Row, error) {
	if in == nil {
		return nil, nil
	}
	if len(in) != n {
		return nil, fmt.Errorf("decode held change: a row of %d values for %d columns", len(in), n)
	}
	row := make(Row, len(in))
	for i, d := range in {
		switch d.K {
		case "n":
			row[i].Kind = Null
		case "u":
			row[i].Kind = Unchanged
		case "t":
			if d.V == nil {
				return nil, fmt.Errorf("decode held change: column %d: text without a value", i)
			}
			row[i] = Datum{Kind: Text, Text: []byte(*d.V)}
		default:
			return nil, fmt.Errorf("decode held change: column %d: unknown kind %q", i, d.K)
		}
	}
	return row, nil
}

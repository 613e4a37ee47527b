package cdc

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/walhook/walhook/internal/change"
)

// errShort is returned for a pgoutput message that ends before its fields do.
var errShort = errors.New("message truncated")

// relations is the relation cache: pgoutput sends a RELATION message before
// the first change to a table in a session and again whenever its shape
// changes. A changed relation gets a new *Relation, so changes already in
// flight keep the shape they were decoded with.
type relations map[uint32]*change.Relation

// apply records m, giving each column the encoder and base type that
// resolve returns for its type.
func (rs relations) apply(m *pglogrepl.RelationMessage, resolve func(oid uint32) (change.Encoder, uint32)) *change.Relation {
	r := &change.Relation{
		ID:              m.RelationID,
		Schema:          m.Namespace,
		Name:            m.RelationName,
		ReplicaIdentity: m.ReplicaIdentity,
		Columns:         make([]change.Column, len(m.Columns)),
	}
	for i, c := range m.Columns {
		enc, base := resolve(c.DataType)
		r.Columns[i] = change.Column{
			Name:    c.Name,
			TypeOID: c.DataType,
			Key:     c.Flags&1 != 0,
			Enc:     enc,
			Base:    base,
		}
	}
	rs[m.RelationID] = r
	return r
}

// decodeRowChange decodes an 'I', 'U' or 'D' message body (after the type
// byte) into ch. Datum texts alias src, which the caller must own: pgoutput
// data arrives in a buffer the connection reuses, so the stream copies each
// message once rather than each column.
func decodeRowChange(typ byte, src []byte, rs relations, ch *change.Change) error {
	if len(src) < 5 {
		return errShort
	}
	relID := binary.BigEndian.Uint32(src)
	rel := rs[relID]
	if rel == nil {
		return fmt.Errorf("change for unknown relation %d (no RELATION message seen)", relID)
	}
	ch.Relation = rel
	src = src[4:]
	var err error
	switch typ {
	case 'I':
		ch.Op = change.Insert
		if src[0] != 'N' {
			return fmt.Errorf("insert: tuple marker %q, want 'N'", src[0])
		}
		ch.New, _, err = decodeTuple(src[1:], rel, false)
	case 'U':
		ch.Op = change.Update
		if src[0] == 'K' || src[0] == 'O' {
			ch.Old, src, err = decodeTuple(src[1:], rel, src[0] == 'K')
			if err != nil {
				return fmt.Errorf("update old tuple: %w", err)
			}
			if len(src) == 0 {
				return errShort
			}
		}
		if src[0] != 'N' {
			return fmt.Errorf("update: tuple marker %q, want 'N'", src[0])
		}
		ch.New, _, err = decodeTuple(src[1:], rel, false)
	case 'D':
		ch.Op = change.Delete
		if src[0] != 'K' && src[0] != 'O' {
			return fmt.Errorf("delete: tuple marker %q, want 'K' or 'O'", src[0])
		}
		ch.Old, _, err = decodeTuple(src[1:], rel, src[0] == 'K')
	default:
		return fmt.Errorf("not a row change: %q", typ)
	}
	return err
}

// decodeTuple decodes TupleData. With keyOnly, pgoutput has sent the replica
// identity key and NULL for every other column; those NULLs mean "not sent",
// so they become Unchanged rather than a NULL a receiver would believe.
func decodeTuple(src []byte, rel *change.Relation, keyOnly bool) (change.Row, []byte, error) {
	if len(src) < 2 {
		return nil, nil, errShort
	}
	n := int(binary.BigEndian.Uint16(src))
	src = src[2:]
	if n != len(rel.Columns) {
		return nil, nil, fmt.Errorf("tuple of %s has %d columns, relation has %d", rel.QualifiedName(), n, len(rel.Columns))
	}
	row := make(change.Row, n)
	for i := range n {
		if len(src) < 1 {
			return nil, nil, errShort
		}
		kind := src[0]
		src = src[1:]
		switch kind {
		case 'n':
			row[i].Kind = change.Null
			if keyOnly && !rel.Columns[i].Key {
				row[i].Kind = change.Unchanged
			}
		case 'u':
			row[i].Kind = change.Unchanged
		case 't', 'b':
			if len(src) < 4 {
				return nil, nil, errShort
			}
			l := int(binary.BigEndian.Uint32(src))
			src = src[4:]
			if l < 0 || l > len(src) {
				return nil, nil, errShort
			}
			row[i] = change.Datum{Kind: change.Text, Text: src[:l:l]}
			src = src[l:]
		default:
			return nil, nil, fmt.Errorf("column %d of %s: unknown kind %q", i, rel.QualifiedName(), kind)
		}
	}
	return row, src, nil
}

package change

import (
	"time"

	"github.com/jackc/pglogrepl"
)

// Op is the kind of row change.
type Op uint8

// The operations pgoutput reports. Truncate is a table's, not a row's: a
// Truncate change has neither New nor Old, one per table a TRUNCATE emptied.
const (
	Insert Op = iota + 1
	Update
	Delete
	Truncate
)

// String returns the lower-case name used in config and CEL ("insert", ...).
func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Truncate:
		return "truncate"
	}
	return "unknown"
}

// ParseOp returns the Op named s ("insert", "update", "delete", "truncate"),
// or 0.
func ParseOp(s string) Op {
	switch s {
	case "insert":
		return Insert
	case "update":
		return Update
	case "delete":
		return Delete
	case "truncate":
		return Truncate
	}
	return 0
}

// Kind tells how a column's value was sent.
type Kind uint8

// Datum kinds, mirroring pgoutput's TupleData column types.
const (
	Null      Kind = 'n' // SQL NULL
	Unchanged Kind = 'u' // unchanged TOAST value, not sent
	Text      Kind = 't' // text representation in Datum.Text
)

// Datum is one column value.
type Datum struct {
	Kind Kind
	Text []byte
}

// Row is a tuple aligned with Relation.Columns.
type Row []Datum

// Column describes one column of a relation.
type Column struct {
	Name    string
	TypeOID uint32
	// Key is true for the columns of the replica identity.
	Key bool
	// Enc converts the column's text form to JSON; set by the relation cache
	// from TypeOID so the hot path does no lookups.
	Enc Encoder
	// Base is the built-in type whose text form the column's values have
	// when TypeOID is not built in: a domain's base type (through every
	// domain), text for an enum, the array of those for an array of domains
	// or enums. 0 when TypeOID says it all, or when no built-in type fits (a
	// composite). Set by the relation cache from the catalog, so that rules
	// read a domain over int as an int, as the body does.
	Base uint32
}

// ValueType returns the type OID the column's values are read as: Base when
// set, otherwise TypeOID.
func (c *Column) ValueType() uint32 {
	if c.Base != 0 {
		return c.Base
	}
	return c.TypeOID
}

// Relation is a table as described by the stream.
type Relation struct {
	ID     uint32
	Schema string
	Name   string
	// ReplicaIdentity is 'd' (default), 'n' (nothing), 'f' (full) or 'i' (index).
	ReplicaIdentity byte
	Columns         []Column
}

// QualifiedName returns schema.name.
func (r *Relation) QualifiedName() string { return r.Schema + "." + r.Name }

// ColumnIndex returns the position of the named column, or -1.
func (r *Relation) ColumnIndex(name string) int {
	for i := range r.Columns {
		if r.Columns[i].Name == name {
			return i
		}
	}
	return -1
}

// Change is one committed row change.
type Change struct {
	Relation *Relation
	Op       Op
	// New is the new row for inserts and updates; nil for deletes and
	// truncates.
	New Row
	// Old is the old row for deletes and for updates when the replica identity
	// sent one; nil otherwise. Unless the table has REPLICA IDENTITY FULL only
	// the key columns are known: the others are Unchanged, never NULL.
	Old Row
	// Tx is the transaction the change belongs to.
	Tx *Tx
	// Seq is the change's position within its transaction, starting at 0. With
	// Tx.CommitLSN it identifies the change across replays.
	Seq uint32
}

// Tx describes the transaction of a change. It is known complete only at commit,
// but CommitLSN and CommitTime are sent in BEGIN, so they are set from the start.
type Tx struct {
	// Source identifies the database: the cluster's system identifier and
	// the database name, "7261…/shop". Event ids include it.
	Source     string
	XID        uint32
	CommitLSN  pglogrepl.LSN // the LSN of the commit record
	EndLSN     pglogrepl.LSN // the end of the commit record: what is acknowledged
	CommitTime time.Time
	// Sites are the active sites the writer set with walhook.set_site() in
	// this transaction, in order.
	Sites []string
}

// Encoder appends the JSON form of a column's text representation to dst.
// It must accept any text PostgreSQL can send for the type and never fail:
// what it cannot represent natively it emits as a JSON string.
type Encoder func(dst, text []byte) []byte

package cdc

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/internal/change"
)

// DefaultTypeLookupTimeout bounds one catalog lookup of column types, and the
// connection made for them before replication starts. The
// stream uses at most half its standby interval, so the goroutine that owns
// the replication connection never blocks past it.
const DefaultTypeLookupTimeout = 5 * time.Second

// firstNormalOID is PostgreSQL's FirstNormalObjectId: OIDs below it are
// built in and never change, so their encoders are resolved once per stream.
const firstNormalOID = 16384

// pgType is what the catalog says about one type, as much as its encoder
// needs.
type pgType struct {
	OID  uint32
	Name string // schema-qualified, for log lines
	// Kind is pg_type.typtype: b(ase), c(omposite), d(omain), e(num),
	// p(seudo), r(ange), m(ultirange).
	Kind  byte
	Base  uint32 // a domain's base type
	Elem  uint32 // an array's element type (types whose output is array_out)
	Delim byte   // typdelim: the delimiter of arrays of this type
	Array uint32 // typarray: the array type of this type, or 0
	// Fields are a composite's live attributes in order.
	Fields []pgField
}

type pgField struct {
	Name string
	Type uint32
}

// typeQuery reads the given types and, recursively, every type their values
// are made of: a domain's base type, an array's element type and a
// composite's attribute types. Dropped attributes are left out, as
// record_out leaves them out of the text.
const typeQuery = `
WITH RECURSIVE want(oid) AS (
    SELECT unnest($1::pg_catalog.oid[])
  UNION
    SELECT d.oid FROM want w
    JOIN pg_catalog.pg_type t ON t.oid = w.oid
    CROSS JOIN LATERAL (
        SELECT t.typbasetype WHERE t.typtype = 'd'
        UNION ALL
        SELECT t.typelem WHERE t.typoutput = 'pg_catalog.array_out'::pg_catalog.regproc
        UNION ALL
        SELECT a.atttypid FROM pg_catalog.pg_attribute a
        WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    ) d(oid)
)
SELECT t.oid, n.nspname || '.' || t.typname, t.typtype::text, t.typbasetype,
       CASE WHEN t.typoutput = 'pg_catalog.array_out'::pg_catalog.regproc THEN t.typelem ELSE 0 END,
       t.typdelim::text, t.typarray,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
       coalesce((SELECT array_agg(a.atttypid ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped), '{}')
FROM want w
JOIN pg_catalog.pg_type t ON t.oid = w.oid
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace`

// lookupTypes runs typeQuery for oids.
func lookupTypes(ctx context.Context, conn *pgx.Conn, oids []uint32) (map[uint32]*pgType, error) {
	rows, err := conn.Query(ctx, typeQuery, oids)
	if err != nil {
		return nil, fmt.Errorf("look up column types: %w", err)
	}
	out := map[uint32]*pgType{}
	var (
		t            pgType
		kind, delim  string
		names        []string
		fieldTypeIDs []uint32
	)
	_, err = pgx.ForEachRow(rows, []any{&t.OID, &t.Name, &kind, &t.Base, &t.Elem, &delim, &t.Array, &names, &fieldTypeIDs}, func() error {
		pt := t
		pt.Kind = kind[0]
		pt.Delim = delim[0]
		if len(names) != len(fieldTypeIDs) {
			return fmt.Errorf("type %s: %d attribute names, %d types", pt.Name, len(names), len(fieldTypeIDs))
		}
		pt.Fields = make([]pgField, len(names))
		for i := range names {
			pt.Fields[i] = pgField{Name: names[i], Type: fieldTypeIDs[i]}
		}
		out[pt.OID] = &pt
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up column types: %w", err)
	}
	return out, nil
}

// maxTypeDepth bounds the nesting buildEncoder follows. The catalog cannot
// hold a cycle (a composite cannot contain itself), so this only guards
// against a catalog read that is inconsistent.
const maxTypeDepth = 32

// buildEncoder returns the encoder for oid from the types read from the
// catalog, memoised in built. It is the pure half of the resolver:
//
//	built-in with a JSON form    that form (change.BuiltinEncoder)
//	domain                       its base type's encoder, recursively
//	array (output is array_out)  a JSON array of its element type's encoder,
//	                             split at the element type's typdelim
//	composite                    a JSON object of its attributes' encoders
//	enum, range, multirange,     a JSON string of the text form
//	other base types, unknown
//
// ok is false when oid, or a type it is made of, is missing from types: the
// caller then knows the lookup was incomplete.
func buildEncoder(oid uint32, types map[uint32]*pgType, built map[uint32]change.Encoder, depth int) (enc change.Encoder, ok bool) {
	if enc, ok := change.BuiltinEncoder(oid); ok {
		return enc, true
	}
	if enc, ok := built[oid]; ok {
		return enc, true
	}
	t := types[oid]
	if t == nil || depth > maxTypeDepth {
		return change.AppendString, false
	}
	ok = true
	switch {
	case t.Elem != 0:
		elem, elemOK := buildEncoder(t.Elem, types, built, depth+1)
		delim := byte(',')
		if et := types[t.Elem]; et != nil {
			delim = et.Delim
		}
		enc, ok = change.ArrayEncoder(elem, delim), elemOK
	case t.Kind == 'd':
		enc, ok = buildEncoder(t.Base, types, built, depth+1)
	case t.Kind == 'c':
		fields := make([]change.Field, len(t.Fields))
		for i, f := range t.Fields {
			fe, fok := buildEncoder(f.Type, types, built, depth+1)
			ok = ok && fok
			fields[i] = change.Field{Name: f.Name, Enc: fe}
		}
		enc = change.CompositeEncoder(fields)
	default:
		// Ranges stay in PostgreSQL's text form ("[1,5)"), as to_json and
		// Debezium give them: lossless, and every client library parses it.
		enc = change.AppendString
	}
	if ok {
		built[oid] = enc
	}
	return enc, ok
}

// baseType returns the built-in type whose text form oid's values have, for
// change.Column.Base: oid itself when built in, a domain's base type through
// every domain, text for an enum, and for an array the array type of its
// element's base type. 0 when no built-in type fits (composites, ranges of
// user types, extension types).
func baseType(oid uint32, types map[uint32]*pgType, depth int) uint32 {
	if _, ok := change.BuiltinEncoder(oid); ok {
		return oid
	}
	t := types[oid]
	if t == nil || depth > maxTypeDepth {
		if oid < firstNormalOID {
			return oid
		}
		return 0
	}
	switch {
	case t.Elem != 0:
		e := baseType(t.Elem, types, depth+1)
		switch {
		case e == 0:
			return 0
		case e == t.Elem && oid < firstNormalOID:
			return oid
		case types[e] != nil && types[e].Array != 0:
			return types[e].Array
		case e == pgtype.TextOID:
			return pgtype.TextArrayOID // enums: text is not looked up
		}
		return 0
	case t.Kind == 'd':
		return baseType(t.Base, types, depth+1)
	case t.Kind == 'e':
		return pgtype.TextOID
	case oid < firstNormalOID:
		return oid
	}
	return 0
}

// compositeFields returns the number of attributes of oid when it is a
// composite type, through any domains over it, and 0 otherwise.
func compositeFields(oid uint32, types map[uint32]*pgType, depth int) int {
	t := types[oid]
	switch {
	case t == nil || depth > maxTypeDepth || t.Elem != 0:
		return 0
	case t.Kind == 'd':
		return compositeFields(t.Base, types, depth+1)
	case t.Kind == 'c':
		return len(t.Fields)
	}
	return 0
}

// resolvedType is what the relation cache needs of a column type.
type resolvedType struct {
	enc    change.Encoder
	base   uint32 // for change.Column.Base
	fields int    // compositeFields
}

// fieldCheck is a composite column of a relation and the number of
// attributes its type had when looked up.
type fieldCheck struct {
	col    int
	fields int
}

// refreshBackoff is how long a relation whose values still do not fit its
// types after a second lookup waits before the next: a backlog written
// before an ALTER TYPE never fits the type as it is now, and must not cost
// a catalog query per change.
const refreshBackoff = 10 * time.Second

// typeResolver gives each column type its encoder. Types change has no
// encoder for are looked up in the catalog on a regular connection of its
// own, when a RELATION message arrives, before the row changes that use it.
// User types are looked up again with every RELATION message that uses them
// (pgoutput sends one after DDL on the table), and when a composite value
// stops fitting its type (ALTER TYPE sends none), so a changed type is seen;
// built-in ones once per stream. A lookup that fails leaves the type's values
// as JSON strings, with one WARN per type, and is retried with the next
// RELATION message: the stream never fails for it.
//
// Only the reader goroutine uses a typeResolver, so it has no lock.
type typeResolver struct {
	url     string
	timeout time.Duration
	log     *slog.Logger
	conn    *pgx.Conn
	cache   map[uint32]resolvedType
	warned  map[uint32]bool
	// Per relation ID: the last RELATION message, its composite columns,
	// and until when a lookup that did not help holds off the next.
	msgs    map[uint32]*pglogrepl.RelationMessage
	checks  map[uint32][]fieldCheck
	backoff map[uint32]time.Time
}

func newTypeResolver(url string, timeout time.Duration, log *slog.Logger) *typeResolver {
	return &typeResolver{url: url, timeout: timeout, log: log,
		cache: map[uint32]resolvedType{}, warned: map[uint32]bool{},
		msgs: map[uint32]*pglogrepl.RelationMessage{}, checks: map[uint32][]fieldCheck{}, backoff: map[uint32]time.Time{}}
}

// column returns oid's encoder and base type (for change.Column.Base) as
// last resolved; a type never resolved is a string with no base type.
func (tr *typeResolver) column(oid uint32) (change.Encoder, uint32) {
	if enc, ok := change.BuiltinEncoder(oid); ok {
		return enc, 0
	}
	if rt, ok := tr.cache[oid]; ok {
		return rt.enc, rt.base
	}
	return change.AppendString, 0
}

// prepare resolves the column types of m that need the catalog.
func (tr *typeResolver) prepare(ctx context.Context, m *pglogrepl.RelationMessage) {
	tr.resolve(ctx, m)
	tr.msgs[m.RelationID] = m
	var checks []fieldCheck
	for i, c := range m.Columns {
		if n := tr.cache[c.DataType].fields; n > 0 {
			checks = append(checks, fieldCheck{col: i, fields: n})
		}
	}
	tr.checks[m.RelationID] = checks
}

// refresh looks ch's relation's types up again when a composite value of ch
// no longer has the number of attributes its type had: pgoutput sends no
// RELATION message after ALTER TYPE, so this is how the stream learns of it.
// ch then gets the relation with the new encoders; rels keeps it for the
// changes that follow.
func (tr *typeResolver) refresh(ctx context.Context, ch *change.Change, rels relations) {
	id := ch.Relation.ID
	checks := tr.checks[id]
	if len(checks) == 0 || (fits(checks, ch.New) && fits(checks, ch.Old)) {
		return
	}
	if time.Now().Before(tr.backoff[id]) {
		return
	}
	m := tr.msgs[id]
	tr.prepare(ctx, m)
	ch.Relation = rels.apply(m, tr.column)
	if !fits(tr.checks[id], ch.New) || !fits(tr.checks[id], ch.Old) {
		tr.backoff[id] = time.Now().Add(refreshBackoff)
	}
}

// fits reports whether each composite value of row has as many attributes
// as its check says. Text that is not a record literal is left to the
// encoder, which sends it as a string.
func fits(checks []fieldCheck, row change.Row) bool {
	for _, c := range checks {
		if c.col >= len(row) || row[c.col].Kind != change.Text {
			continue
		}
		n := change.RecordFields(row[c.col].Text)
		if n >= 0 && n != c.fields && !(n == 0 && c.fields == 1) {
			return false
		}
	}
	return true
}

// resolve looks up the column types of m that need the catalog.
func (tr *typeResolver) resolve(ctx context.Context, m *pglogrepl.RelationMessage) {
	var oids []uint32
	for _, c := range m.Columns {
		if _, ok := change.BuiltinEncoder(c.DataType); ok {
			continue
		}
		if _, ok := tr.cache[c.DataType]; ok && c.DataType < firstNormalOID {
			continue
		}
		if !slices.Contains(oids, c.DataType) {
			oids = append(oids, c.DataType)
		}
	}
	if len(oids) == 0 {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, tr.timeout)
	defer cancel()
	types, err := tr.lookup(lctx, oids)
	if err != nil {
		if ctx.Err() != nil {
			return // stopping: the stream reports its own error
		}
		for _, oid := range oids {
			tr.warn(oid, m.Namespace+"."+m.RelationName, err)
		}
		return
	}
	built := map[uint32]change.Encoder{}
	for _, oid := range oids {
		enc, ok := buildEncoder(oid, types, built, 0)
		if !ok {
			tr.warn(oid, m.Namespace+"."+m.RelationName, fmt.Errorf("type %d, or a type it is made of, is not in the catalog (dropped since?)", oid))
			continue
		}
		base := baseType(oid, types, 0)
		if base == oid {
			base = 0
		}
		tr.cache[oid] = resolvedType{enc: enc, base: base, fields: compositeFields(oid, types, 0)}
		delete(tr.warned, oid)
	}
}

func (tr *typeResolver) warn(oid uint32, rel string, err error) {
	if tr.warned[oid] {
		return
	}
	tr.warned[oid] = true
	tr.log.Warn("column type not resolved: its values are sent as JSON strings until it is",
		"type_oid", oid, "relation", rel, "err", err)
}

// open connects ahead of the first lookup, before streaming starts, so that
// a lookup on the reader's clock is one query, not a connection set-up too.
// A failure is left for lookup to retry, and to report per type if it must.
func (tr *typeResolver) open(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, DefaultTypeLookupTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, tr.url)
	if err != nil {
		tr.log.Debug("connect for type lookups", "err", err)
		return
	}
	tr.conn = conn
}

// lookup queries the catalog, connecting first when needed; a failed
// connection is dropped so the next lookup reconnects.
func (tr *typeResolver) lookup(ctx context.Context, oids []uint32) (map[uint32]*pgType, error) {
	if tr.conn == nil {
		conn, err := pgx.Connect(ctx, tr.url)
		if err != nil {
			return nil, fmt.Errorf("connect for type lookups: %w", err)
		}
		tr.conn = conn
	}
	types, err := lookupTypes(ctx, tr.conn, oids)
	if err != nil {
		tr.close(ctx)
	}
	return types, err
}

// close closes the lookup connection, if any, waiting at most a second for
// the server to hear of it.
func (tr *typeResolver) close(ctx context.Context) {
	if tr.conn != nil {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = tr.conn.Close(cctx)
		cancel()
		tr.conn = nil
	}
}

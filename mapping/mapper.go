package mapping

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/jackc/pglogrepl"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/expr"
)

// Mapper turns changes into events. It is immutable after New and safe for
// concurrent use.
type Mapper struct {
	tables map[string]*Table // by qualified name
	// bySchema indexes tables by schema, then table name, so Map finds a
	// relation's table without building "schema.name" per change.
	bySchema map[string]map[string]*Table
	names    []string
	events   []EventInfo
}

// Table is one compiled table mapping.
type Table struct {
	Name   string // schema.table
	Noun   string
	Config *TableConfig
	// Derived are the table's derived events in config order. Map does not
	// produce them yet: their `when` is CEL, compiled by another package.
	Derived []*DerivedEvent

	// when holds the compiled condition of each derived event, by name;
	// payload the compiled payload expression, nil for none.
	when    map[string]*expr.Program
	payload *expr.Program

	// Existing is the event of a row that already exists, sent by a
	// backfill: <noun>.existing, or the verb `verbs: {existing: ...}` names.
	Existing string

	// events is the standard event name by change.Op; "" for none.
	events [change.Truncate + 1]string
	// derivedOn is Derived by change.Op, ready for the CEL hook in Map.
	derivedOn [change.Truncate + 1][]*DerivedEvent

	include map[string]bool // nil: every column not excluded
	exclude map[string]bool

	// filter caches the column selection for the last relation seen, so
	// AppendData and Site do no map lookups per row. Relations change only
	// with DDL, so one entry nearly always hits; a miss rebuilds it.
	filter atomic.Pointer[relFilter]
}

// EventInfo describes an event the config can produce.
type EventInfo struct {
	Name    string
	Table   string // schema.table
	Op      string // insert, update, delete, truncate or existing; "" for none
	Derived bool
}

// Event is one event produced by a change.
type Event struct {
	ID     string
	Name   string
	Table  *Table
	Change *change.Change
	// Data and Previous, when set, are the body's data and previous objects
	// built by the table's payload expression; nil means the row's columns.
	Data, Previous []byte
	// Backfill is the id of the backfill that sent an existing row; 0 for
	// a change from the stream.
	Backfill int64
}

// New compiles cfg. It checks the table mappings again, so a Config built in
// code gets the same checks as a parsed one. The Mapper keeps cfg's
// TableConfigs; do not change them afterwards.
func New(cfg *Config) (*Mapper, error) {
	if cfg == nil {
		return nil, errors.New("new mapper: nil config")
	}
	if errs := validateTables(cfg.File, cfg.Tables); len(errs) > 0 {
		return nil, (&collector{errs: errs}).err()
	}
	m := &Mapper{
		tables:   make(map[string]*Table, len(cfg.Tables)),
		bySchema: map[string]map[string]*Table{},
	}
	var errs Errors
	for i, tc := range cfg.Tables {
		t := &Table{Name: tc.Table, Noun: tc.Noun, Config: tc, Derived: tc.Events, when: map[string]*expr.Program{}}
		errs = append(errs, t.compile(cfg.File, index("tables", i))...)
		verbs := tc.Verbs
		if verbs == nil {
			verbs = DefaultVerbs()
		}
		// Truncate only when `verbs:` names it: DefaultVerbs does not.
		for op := change.Insert; op <= change.Truncate; op++ {
			if v := verbs[op.String()]; v != "" {
				t.events[op] = tc.Noun + "." + v
				m.events = append(m.events, EventInfo{Name: t.events[op], Table: t.Name, Op: op.String()})
			}
		}
		existing := verbs[VerbExisting]
		if existing == "" {
			existing = VerbExisting
		}
		t.Existing = tc.Noun + "." + existing
		m.events = append(m.events, EventInfo{Name: t.Existing, Table: t.Name, Op: VerbExisting})
		for _, e := range tc.Events {
			op := change.ParseOp(e.On)
			t.derivedOn[op] = append(t.derivedOn[op], e)
			m.events = append(m.events, EventInfo{Name: e.Name, Table: t.Name, Op: e.On, Derived: true})
		}
		if len(tc.Columns.Include) > 0 {
			t.include = setOf(tc.Columns.Include)
		}
		t.exclude = setOf(tc.Columns.Exclude)

		schema, name, _ := strings.Cut(tc.Table, ".")
		if m.bySchema[schema] == nil {
			m.bySchema[schema] = map[string]*Table{}
		}
		m.bySchema[schema][name] = t
		m.tables[t.Name] = t
		m.names = append(m.names, t.Name)
	}
	if len(errs) > 0 {
		return nil, (&collector{errs: errs}).err()
	}
	slices.Sort(m.names)
	slices.SortFunc(m.events, func(a, b EventInfo) int { return strings.Compare(a.Name, b.Name) })
	return m, nil
}

// compile compiles the table's derived events' conditions and its payload
// (CEL, in the environment package expr shares with acl), reporting
// problems at their file:line and field.
func (t *Table) compile(file, path string) Errors {
	var errs Errors
	add := func(ps []expr.Problem, field string) {
		for _, p := range ps {
			errs = append(errs, ConfigError{File: file, Line: p.Line, Field: field, Problem: p.Text})
		}
	}
	tc := t.Config
	for j, e := range tc.Events {
		if e == nil || strings.TrimSpace(e.When) == "" {
			continue // validateTables reports it
		}
		field := index(path+".events", j) + ".when"
		prg, ps := expr.Compile(expr.Condition, tc.Table, field, e.When, cmp.Or(e.WhenLine, e.Line))
		if len(ps) > 0 {
			add(ps, field)
			continue
		}
		t.when[e.Name] = prg
	}
	if strings.TrimSpace(tc.Payload) != "" {
		field := path + ".payload"
		prg, ps := expr.Compile(expr.Payload, tc.Table, field, tc.Payload, cmp.Or(tc.PayloadLine, tc.Line))
		if len(ps) > 0 {
			add(ps, field)
		} else {
			t.payload = prg
		}
	}
	return errs
}

// When reports whether derived event d of t happens for in: false,
// without error, when in's op is not d's `on`. A condition that fails to
// evaluate (old is null, a column was not sent) is false with the error.
func (t *Table) When(d *DerivedEvent, in *expr.Input) (bool, error) {
	if in != nil && in.Op.String() != d.On {
		return false, nil
	}
	prg := t.when[d.Name]
	if prg == nil {
		return false, fmt.Errorf("no derived event %s in %s", d.Name, t.Name)
	}
	return prg.Bool(in, nil)
}

// HasPayload reports whether t has a payload expression.
func (t *Table) HasPayload() bool { return t.payload != nil }

// Payload evaluates t's payload expression for in and returns the JSON
// object it builds (see expr.Program.JSON); nil and no error without one.
func (t *Table) Payload(in *expr.Input) ([]byte, error) {
	if t.payload == nil {
		return nil, nil
	}
	return t.payload.JSON(in)
}

// Programs returns the compiled derived conditions and payloads of every
// table, for checks of what they read.
func (m *Mapper) Programs() []*expr.Program {
	var out []*expr.Program
	for _, name := range m.names {
		t := m.tables[name]
		for _, d := range t.Derived {
			if p := t.when[d.Name]; p != nil {
				out = append(out, p)
			}
		}
		if t.payload != nil {
			out = append(out, t.payload)
		}
	}
	return out
}

// Columns returns, sorted, the columns table's derived conditions and
// payload read by name through row, new or old.
func (m *Mapper) Columns(table string) []string {
	cols := map[string]bool{}
	for _, p := range m.tablePrograms(table) {
		p.Columns(cols)
	}
	return sortedSet(cols)
}

// OldColumns returns, sorted, the columns table's derived conditions and
// payload read through row or old, and all=true when one uses row or old
// other than by a constant name.
func (m *Mapper) OldColumns(table string) (columns []string, all bool) {
	cols := map[string]bool{}
	for _, p := range m.tablePrograms(table) {
		all = p.OldColumns(cols) || all
	}
	return sortedSet(cols), all
}

func (m *Mapper) tablePrograms(table string) []*expr.Program {
	t := m.tables[table]
	if t == nil {
		return nil
	}
	var out []*expr.Program
	for _, p := range t.when {
		out = append(out, p)
	}
	if t.payload != nil {
		out = append(out, t.payload)
	}
	return out
}

func sortedSet(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Tables returns the qualified names of the mapped tables, sorted. The
// publication also needs the owners.watch tables and walhook's own
// subscriptions table; those are not mapped tables and are not listed here.
func (m *Mapper) Tables() []string { return slices.Clone(m.names) }

// Events returns every event the config can produce, sorted by name.
func (m *Mapper) Events() []EventInfo { return slices.Clone(m.events) }

// Truncates reports whether any table maps TRUNCATE to an event: only then
// does the publication publish truncates.
func (m *Mapper) Truncates() bool {
	for _, t := range m.tables {
		if t.events[change.Truncate] != "" {
			return true
		}
	}
	return false
}

// Table returns the mapping of the named table, or nil if it is not mapped.
func (m *Mapper) Table(qualified string) *Table { return m.tables[qualified] }

// Map appends the events of ch to dst: the standard event when the table maps
// the change's operation to a verb (a truncate's only when `verbs:` names
// truncate). Changes to unmapped tables produce nothing. ch.Tx must be set: it supplies the commit LSN for the event id.
func (m *Mapper) Map(dst []Event, ch *change.Change) []Event {
	rel := ch.Relation
	if rel == nil {
		return dst
	}
	return m.MapTable(dst, m.bySchema[rel.Schema][rel.Name], ch)
}

// MapTable is Map for a change known to be of table t, whatever its
// relation's name says now (a mapped table renamed since the config was
// written).
func (m *Mapper) MapTable(dst []Event, t *Table, ch *change.Change) []Event {
	if t == nil || ch.Op > change.Truncate {
		return dst
	}
	if name := t.events[ch.Op]; name != "" {
		dst = append(dst, Event{
			ID:     EventID(ch.Tx.Source, ch.Tx.CommitLSN, ch.Seq, name),
			Name:   name,
			Table:  t,
			Change: ch,
		})
	}
	// Derived events are the caller's: their `when` is CEL, compiled by
	// package acl, which imports this package and so cannot be called from
	// it. The pipeline appends them with the same EventID, the name keeping
	// their ids apart from the standard event's.
	return dst
}

// EventID returns the id of the event name produced by the change at seq in
// the transaction committed at commitLSN in the database source. It is
// deterministic, so a change replayed after a restart gets the same id and
// receivers can deduplicate; source (change.Tx.Source: the cluster's system
// identifier and the database name) keeps two databases whose LSNs happen to
// match from sending one receiver the same id for different events. The id
// is formatted as a UUID (version 8, RFC 9562 variant) built from SHA-256
// over len(source) (uint16 big-endian), source, commitLSN (uint64
// big-endian), seq (uint32 big-endian) and name.
//
// LSNs are pglogrepl.LSN end to end, here too: change.Tx carries them so.
func EventID(source string, commitLSN pglogrepl.LSN, seq uint32, name string) string {
	// Hash from a stack buffer: names are short, so this does not allocate.
	var buf [192]byte
	in := binary.BigEndian.AppendUint16(buf[:0], uint16(len(source)))
	in = append(in, source...)
	in = binary.BigEndian.AppendUint64(in, uint64(commitLSN))
	in = binary.BigEndian.AppendUint32(in, seq)
	in = append(in, name...)
	sum := sha256.Sum256(in)
	return UUIDv8(sum)
}

// UUIDv8 formats the first 16 bytes of a SHA-256 sum as a version 8 UUID:
// the form of every id walhook derives (event ids, batch ids, backfill
// event ids).
func UUIDv8(sum [sha256.Size]byte) string {
	u := sum[:16]
	u[6] = u[6]&0x0f | 0x80 // version 8
	u[8] = u[8]&0x3f | 0x80 // variant 10
	const hexDigits = "0123456789abcdef"
	var out [36]byte
	j := 0
	for i, b := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out[j] = '-'
			j++
		}
		out[j], out[j+1] = hexDigits[b>>4], hexDigits[b&0x0f]
		j += 2
	}
	return string(out[:])
}

// BackfillEventID returns the id of the event name of the existing row with
// key (its key columns' text forms) of table, sent by backfill: the same
// row of the same backfill always gets the same id, so a chunk sent again
// after a restart can be deduplicated. It is formatted like EventID, from
// SHA-256 over "backfill", backfill (uint64 big-endian), table, NUL, key,
// NUL and name.
func BackfillEventID(backfill int64, table, key, name string) string {
	h := sha256.New()
	h.Write([]byte("backfill"))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(backfill)))
	h.Write([]byte(table + "\x00" + key + "\x00" + name))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return UUIDv8(sum)
}

// Site returns the row's site path from the table's site column: the new row,
// or the old row for deletes (and for updates whose new value is an
// unchanged TOAST value). NULL, empty, absent or unconfigured gives "/".
// The path is cleaned with CleanSite. A truncate, which empties the table
// at every site, is at "/".
func (t *Table) Site(ch *change.Change) string {
	if t.Config == nil || t.Config.Site == "" || ch.Relation == nil || ch.Op == change.Truncate {
		return "/"
	}
	f := t.filterFor(ch.Relation)
	if f.site < 0 {
		return "/"
	}
	row := ch.New
	if ch.Op == change.Delete {
		row = ch.Old
	}
	d := datum(row, f.site)
	if d.Kind == change.Unchanged {
		d = datum(ch.Old, f.site)
	}
	if d.Kind != change.Text || len(d.Text) == 0 {
		return "/"
	}
	return CleanSite(string(d.Text))
}

// CleanSite normalises a site path: a leading slash, no empty, "." or ".."
// segments, and no trailing slash except for the root. "" is "/". Sites are
// compared as cleaned paths everywhere, so "/acme/east/" and "acme//east"
// name the same site.
func CleanSite(s string) string {
	if s == "" {
		return "/"
	}
	if s[0] != '/' {
		s = "/" + s
	}
	return path.Clean(s)
}

func datum(row change.Row, i int) change.Datum {
	if i < len(row) {
		return row[i]
	}
	// A row shorter than its relation is not expected from pgoutput; treat
	// the missing values as not sent rather than as NULL.
	return change.Datum{Kind: change.Unchanged}
}

// AppendData appends row as a JSON object {"col": value, ...} in column
// order, keeping the columns the table's include/exclude select. An
// unchanged TOAST value is taken from fill when fill is non-nil and has it;
// otherwise the column is left out, never reported as null. Values are
// encoded with the column's Encoder, or as JSON strings when it has none.
func (t *Table) AppendData(dst []byte, rel *change.Relation, row, fill change.Row) []byte {
	f := t.filterFor(rel)
	dst = append(dst, '{')
	first := true
	for i := range f.cols {
		c := &f.cols[i]
		d := datum(row, c.idx)
		if d.Kind == change.Unchanged && fill != nil {
			d = datum(fill, c.idx)
		}
		if d.Kind != change.Null && d.Kind != change.Text {
			continue // unchanged and not filled: leave it out
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, c.key...)
		dst = change.AppendJSON(dst, c.enc, d)
	}
	return append(dst, '}')
}

// relFilter is a table's column selection resolved against one relation.
type relFilter struct {
	rel   *change.Relation
	cols0 *change.Column // &rel.Columns[0] when built, to notice a replaced slice
	ncols int
	cols  []outCol
	site  int // index of the site column, or -1
}

type outCol struct {
	idx int
	key []byte // the JSON-escaped column name and ':'
	enc change.Encoder
}

// filterFor returns the column filter for rel, building it on a cache miss.
// The cache is keyed by the *Relation pointer: the stream hands out a new
// Relation when a table's shape changes and never edits one in place. The
// column count and slice are compared as well, as a cheap guard against an
// in-place edit.
func (t *Table) filterFor(rel *change.Relation) *relFilter {
	f := t.filter.Load()
	if f != nil && f.rel == rel && f.ncols == len(rel.Columns) && f.cols0 == unsafe.SliceData(rel.Columns) {
		return f
	}
	f = &relFilter{rel: rel, cols0: unsafe.SliceData(rel.Columns), ncols: len(rel.Columns), site: -1}
	site := ""
	if t.Config != nil {
		site = t.Config.Site
	}
	for i := range rel.Columns {
		c := &rel.Columns[i]
		if site != "" && c.Name == site {
			f.site = i
		}
		if (t.include != nil && !t.include[c.Name]) || t.exclude[c.Name] {
			continue
		}
		key := change.AppendString(nil, []byte(c.Name))
		f.cols = append(f.cols, outCol{idx: i, key: append(key, ':'), enc: c.Enc})
	}
	t.filter.Store(f)
	return f
}

func setOf(list []string) map[string]bool {
	if len(list) == 0 {
		return nil
	}
	s := make(map[string]bool, len(list))
	for _, v := range list {
		s[v] = true
	}
	return s
}

// NamedColumn is a column the config names for a table, with where.
type NamedColumn struct {
	Name  string
	Field string // tables[i].key[j], .site, .columns.include[j], .columns.exclude[j]
}

// NamedColumns returns the columns the table's config names: its key, site
// and column filter. A relation that lacks one no longer matches the config;
// an excluded column that was renamed would be sent under its new name.
func (t *Table) NamedColumns() []NamedColumn {
	c := t.Config
	if c == nil {
		return nil
	}
	var out []NamedColumn
	add := func(field string, cols []string) {
		for i, name := range cols {
			out = append(out, NamedColumn{Name: name, Field: index(field, i)})
		}
	}
	add("key", c.Key)
	if c.Site != "" {
		out = append(out, NamedColumn{Name: c.Site, Field: "site"})
	}
	add("columns.include", c.Columns.Include)
	add("columns.exclude", c.Columns.Exclude)
	return out
}

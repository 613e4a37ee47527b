package acl

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/expr"
	"github.com/walhook/walhook/mapping"
)

// Input is one row change as the rules see it: expr.Input.
type Input = expr.Input

// InputFor builds the Input of ch, converting its rows once: expr.InputFor.
func InputFor(ch *change.Change, site string) *Input { return expr.InputFor(ch, site) }

// RowValues converts a decoded row to CEL values once: expr.RowValues.
func RowValues(rel *change.Relation, row change.Row) map[string]any { return expr.RowValues(rel, row) }

// Errors returned by evaluation. Config problems are mapping.Errors instead.
var (
	// ErrUnknownTable means Allow was asked about a table with no compiled
	// rule: the caller and the config disagree.
	ErrUnknownTable = errors.New("no acl rule for table")
	// ErrWrongTable means an Input's Table is not the rule's table.
	ErrWrongTable = expr.ErrWrongTable
	// ErrBadOp means an Input is nil or its Op is not insert, update,
	// delete or truncate.
	ErrBadOp = expr.ErrBadOp
	// ErrNotBool means a rule declared as dyn gave something other than a
	// bool for this input, e.g. `row.flag` on a text column.
	ErrNotBool = expr.ErrNotBool
)

// Table is one table's acl rule as the config wrote it.
type Table struct {
	Name  string // schema.table
	Rule  string // CEL; "true" delivers to every subscriber
	Line  int    // line of the rule in the config file
	Field string // tables[0].acl, for errors
}

// Rules is the compiled acl rule of every table. It is immutable after
// Compile and safe for concurrent use.
type Rules struct {
	tables map[string]*tableRule // by schema.table
}

type tableRule struct {
	prg *expr.Program
	// always is set for the rule "true": every subscriber sees every row, so
	// callers may skip loading owners and binding rows.
	always  bool
	oldCols []string // read through row or old by name
	oldAll  bool     // row or old used other than by a constant name
	refCols []string // read through row, new or old by name
}

// Compile compiles and type-checks the acl rule of each table, written in
// file. Problems are reported all at once as mapping.Errors naming the file,
// the line of the rule and the field: CEL's own message for syntax errors,
// unknown variables and type errors, a rule that does not give a bool, a
// rule whose estimated cost exceeds expr.MaxCost, a missing rule, a table
// listed twice.
func Compile(file string, tables []Table) (*Rules, error) {
	r := &Rules{tables: map[string]*tableRule{}}
	var errs mapping.Errors
	add := func(line int, field, problem string) {
		errs = append(errs, mapping.ConfigError{File: file, Line: line, Field: field, Problem: problem})
	}
	seen := map[string]string{}
	for _, t := range tables {
		if first, dup := seen[t.Name]; dup {
			add(t.Line, t.Field, fmt.Sprintf("table %s already has a rule, at %s", t.Name, first))
			continue
		}
		seen[t.Name] = t.Field
		if strings.TrimSpace(t.Rule) == "" {
			add(t.Line, t.Field, `required: a CEL rule deciding which subscribers may see a row ("true" delivers to every subscriber)`)
			continue
		}
		prg, problems := expr.Compile(expr.Rule, t.Name, t.Field, t.Rule, t.Line)
		if len(problems) > 0 {
			for _, p := range problems {
				add(p.Line, t.Field, p.Text)
			}
			continue
		}
		tr := &tableRule{prg: prg, always: prg.IsTrue()}
		old, refs := map[string]bool{}, map[string]bool{}
		tr.oldAll = prg.OldColumns(old)
		prg.Columns(refs)
		tr.oldCols = sortedKeys(old)
		tr.refCols = sortedKeys(refs)
		r.tables[t.Name] = tr
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b mapping.ConfigError) int { return cmp.Compare(a.Line, b.Line) })
		return nil, errs
	}
	return r, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Programs returns the compiled rules, for checks of what they read.
func (r *Rules) Programs() []*expr.Program {
	out := make([]*expr.Program, 0, len(r.tables))
	for _, t := range r.tables {
		out = append(out, t.prg)
	}
	slices.SortFunc(out, func(a, b *expr.Program) int { return strings.Compare(a.Field(), b.Field()) })
	return out
}

// Columns returns, sorted, the columns table's rule reads by name through
// row, new or old.
func (r *Rules) Columns(table string) []string {
	t := r.tables[table]
	if t == nil {
		return nil
	}
	return slices.Clone(t.refCols)
}

// AlwaysAllows reports whether table's rule is the literal "true".
func (r *Rules) AlwaysAllows(table string) bool {
	t := r.tables[table]
	return t != nil && t.always
}

// NeedsFullIdentity reports whether table's rule reads row or old, and so
// may need the old row's non-key columns: a delete is judged on the old
// row, which PostgreSQL sends in full only under REPLICA IDENTITY FULL. The
// answer is conservative: it is true even when every column read is a key
// column; OldColumns has the detail. Unknown tables need nothing.
func (r *Rules) NeedsFullIdentity(table string) bool {
	t := r.tables[table]
	return t != nil && (t.oldAll || len(t.oldCols) > 0)
}

// OldColumns returns, sorted, the columns table's rule reads through row or
// old, and all=true when it uses row or old other than by a constant column
// name (then every column may matter).
func (r *Rules) OldColumns(table string) (columns []string, all bool) {
	t := r.tables[table]
	if t == nil {
		return nil, false
	}
	return slices.Clone(t.oldCols), t.oldAll
}

func (r *Rules) rule(table string) (*expr.Program, error) {
	t := r.tables[table]
	if t == nil {
		return nil, fmt.Errorf("%w %s", ErrUnknownTable, table)
	}
	return t.prg, nil
}

// Allow reports whether the owner with the given attributes may see the row
// of in, by table's acl rule. A rule that fails to evaluate (a missing column
// or attribute, a type mismatch) gives false and the error. owner should
// come from Owners, whose attributes are already CEL values; other Go values
// work but are converted on every call.
func (r *Rules) Allow(table string, in *Input, owner map[string]any) (bool, error) {
	p, err := r.rule(table)
	if err != nil {
		return false, err
	}
	return p.Bool(in, owner)
}

// AllowMany judges the row of in once for each owner of owners, keyed by
// owner id, and records the verdicts in dst, which it clears first: a row
// fanned out to many subscriptions of the same owners costs one evaluation
// per owner, not per subscription. Owners absent from owners are absent from
// dst, and so denied. A rule that fails for an owner denies it; AllowMany
// returns how many failed and the first error.
func (r *Rules) AllowMany(table string, in *Input, owners map[string]map[string]any, dst map[string]bool) (failed int, err error) {
	clear(dst)
	p, err := r.rule(table)
	if err != nil {
		return len(owners), err
	}
	var first error
	if err := p.Each(in, owners, func(id string, ok bool, e error) {
		if e != nil {
			if failed == 0 {
				first = fmt.Errorf("owner %s: %w", id, e)
			}
			failed++
		}
		dst[id] = ok
	}); err != nil {
		return len(owners), err
	}
	return failed, first
}

// AllowEach is AllowMany recording, in failed (cleared first), the error of
// each owner whose evaluation failed, so that the caller can hold those
// deliveries rather than treat them as denied.
func (r *Rules) AllowEach(table string, in *Input, owners map[string]map[string]any, dst map[string]bool, failed map[string]error) error {
	clear(dst)
	clear(failed)
	p, err := r.rule(table)
	if err != nil {
		return err
	}
	return p.Each(in, owners, func(id string, ok bool, e error) {
		if e != nil {
			failed[id] = e
		}
		dst[id] = ok
	})
}

package acl

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/mapping"
)

// Limits on what a rule may cost. CEL estimates a rule's worst-case cost
// from the sizes of the values it reads; since row values and owner
// attributes are only known at run time, the estimate assumes every string,
// list and map a rule reads holds at most AssumedSize characters or elements.
// Under that assumption `x in owner.tenants`, string functions, a
// comprehension and a comprehension nested in one more are all well inside
// MaxCost; a third level of nesting is not, and a rule that runs for every
// subscription of every row must not be able to loop n³ times.
//
// RuntimeCostLimit is the backstop for when the assumption is wrong: a rule
// with a comprehension (exists, all, map, filter), the only way a rule's cost
// can grow faster than its input, stops when its actual cost passes it, and
// fails, so denies. It is MaxCost, the budget the estimate enforced, which
// is tens of milliseconds of evaluation: more would let one row stall the
// pipeline for seconds across a fan-out. Rules without comprehensions are
// not tracked: tracking doubles the cost of an evaluation, and their cost is
// linear in the size of the row and owner anyway.
const (
	MaxCost          = 1_000_000
	AssumedSize      = 100
	RuntimeCostLimit = MaxCost
)

// Errors returned by evaluation. Config problems are mapping.Errors instead.
var (
	// ErrUnknownTable means Allow was asked about a table with no compiled
	// rule: the caller and the config disagree.
	ErrUnknownTable = errors.New("no acl rule for table")
	// ErrUnknownEvent means When was asked about a name that is not a
	// derived event of the config.
	ErrUnknownEvent = errors.New("no derived event")
	// ErrWrongTable means an Input's Table is not the rule's table.
	ErrWrongTable = errors.New("input is a row of another table")
	// ErrBadOp means an Input is nil or its Op is not insert, update or
	// delete.
	ErrBadOp = errors.New("input has no valid op")
	// ErrNotBool means a rule declared as dyn gave something other than a
	// bool for this input, e.g. `row.flag` on a text column.
	ErrNotBool = errors.New("rule did not give a bool")
)

// Variable names, as the config's rules use them.
var (
	aclVars  = []string{"row", "new", "old", "op", "owner", "table", "site"}
	whenVars = []string{"row", "new", "old", "op", "table", "site"}
)

// Rules is the compiled acl rule of every table and the condition of every
// derived event. It is immutable after Compile and safe for concurrent use.
type Rules struct {
	tables map[string]*tableRules // by schema.table
	events map[string]*rule       // derived events by name
}

type tableRules struct {
	acl *rule
	// always is set for the rule "true": every subscriber sees every row, so
	// callers may skip loading owners and binding rows.
	always  bool
	payload *rule // nil when the table has none
	// oldCols are the columns the table's rules read through row or old;
	// oldAll is set when a rule uses row or old other than by column name.
	oldCols []string
	oldAll  bool
	// refCols are the columns the table's rules read through row, new or
	// old by name: a table that loses one no longer matches the config.
	refCols []string
}

// rule is one compiled expression.
type rule struct {
	prg   cel.Program
	field string  // "tables[0].acl", for errors
	table string  // schema.table
	tval  ref.Val // table as a CEL string, built once instead of per call
	on    change.Op
}

// Compile compiles and type-checks every tables[].acl and
// tables[].events[].when of cfg. Problems are reported all at once as
// mapping.Errors naming the config file, the line of the expression and the
// field (tables[0].acl, tables[0].events[1].when): CEL's own message for
// syntax errors, unknown variables and type errors, a rule that does not give
// a bool, a rule whose estimated cost exceeds MaxCost, and a missing acl.
//
// A `when` sees row, new, old, op, table and site but no owner: it decides
// whether the event exists at all, before any subscriber is considered, so a
// condition reading owner is refused rather than never firing.
func Compile(cfg *mapping.Config) (*Rules, error) {
	if cfg == nil {
		return nil, errors.New("compile acl rules: nil config")
	}
	env, err := envs()
	if err != nil {
		return nil, fmt.Errorf("compile acl rules: %w", err)
	}
	r := &Rules{tables: map[string]*tableRules{}, events: map[string]*rule{}}
	var errs mapping.Errors
	add := func(line int, field, problem string) {
		errs = append(errs, mapping.ConfigError{File: cfg.File, Line: line, Field: field, Problem: problem})
	}
	seenTable := map[string]string{}
	seenEvent := map[string]string{}
	for i, t := range cfg.Tables {
		if t == nil {
			continue
		}
		path := "tables[" + strconv.Itoa(i) + "]"
		tr := &tableRules{}
		cols := map[string]bool{}
		refs := map[string]bool{}
		if first, dup := seenTable[t.Table]; dup {
			add(t.Line, path+".table", fmt.Sprintf("table %s is already mapped by %s", t.Table, first))
		} else {
			seenTable[t.Table] = path
			r.tables[t.Table] = tr
		}

		field := path + ".acl"
		if strings.TrimSpace(t.ACL) == "" {
			add(cmp.Or(t.ACLLine, t.Line), field, `required: a CEL rule deciding which subscribers may see a row ("true" delivers to every subscriber)`)
		} else if ru, ast, problems := compile(env.acl, aclVars, t.ACL, cmp.Or(t.ACLLine, t.Line)); len(problems) > 0 {
			for _, p := range problems {
				add(p.line, field, p.text)
			}
		} else {
			ru.field, ru.table, ru.tval = field, t.Table, types.String(t.Table)
			tr.acl = ru
			tr.always = strings.TrimSpace(t.ACL) == "true"
			tr.oldAll = oldColumns(ast, cols) || tr.oldAll
			refColumns(ast, refs)
		}

		for j, e := range t.Events {
			if e == nil {
				continue
			}
			field := path + ".events[" + strconv.Itoa(j) + "].when"
			if strings.TrimSpace(e.When) == "" {
				add(cmp.Or(e.WhenLine, e.Line), field, "required: a CEL condition, e.g. new.status == 'paid' && old.status != 'paid'")
				continue
			}
			ru, ast, problems := compile(env.when, whenVars, e.When, cmp.Or(e.WhenLine, e.Line))
			if len(problems) > 0 {
				for _, p := range problems {
					add(p.line, field, p.text)
				}
				continue
			}
			ru.field, ru.table, ru.tval, ru.on = field, t.Table, types.String(t.Table), change.ParseOp(e.On)
			if first, dup := seenEvent[e.Name]; dup {
				add(e.Line, path+".events["+strconv.Itoa(j)+"].name", fmt.Sprintf("event %s is already defined by %s", e.Name, first))
				continue
			}
			seenEvent[e.Name] = path + ".events[" + strconv.Itoa(j) + "]"
			r.events[e.Name] = ru
			tr.oldAll = oldColumns(ast, cols) || tr.oldAll
			refColumns(ast, refs)
		}
		if strings.TrimSpace(t.Payload) != "" {
			field := path + ".payload"
			ru, ast, problems := compileFor(env.payload, whenVars, t.Payload, cmp.Or(t.PayloadLine, t.Line), true)
			if len(problems) > 0 {
				for _, p := range problems {
					add(p.line, field, p.text)
				}
			} else {
				ru.field, ru.table, ru.tval = field, t.Table, types.String(t.Table)
				tr.payload = ru
				tr.oldAll = oldColumns(ast, cols) || tr.oldAll
				refColumns(ast, refs)
			}
		}
		for c := range cols {
			tr.oldCols = append(tr.oldCols, c)
		}
		slices.Sort(tr.oldCols)
		for c := range refs {
			tr.refCols = append(tr.refCols, c)
		}
		slices.Sort(tr.refCols)
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b mapping.ConfigError) int { return cmp.Compare(a.Line, b.Line) })
		return nil, errs
	}
	return r, nil
}

// envs builds the two CEL environments once per process: building one
// costs milliseconds, and they are immutable and safe to share.
var envs = sync.OnceValues(func() (celEnvs, error) {
	row := cel.MapType(cel.StringType, cel.DynType)
	common := []cel.EnvOption{
		cel.Variable("row", row),
		// new and old are null when absent, which a map type cannot hold:
		// `old == null` would not type-check.
		cel.Variable("new", cel.DynType),
		cel.Variable("old", cel.DynType),
		cel.Variable("op", cel.StringType),
		cel.Variable("table", cel.StringType),
		cel.Variable("site", cel.StringType),
		// owner.?admin.orValue(false) for attributes some owners lack.
		cel.OptionalTypes(),
		// lowerAscii, split, ... and sets.intersects(row.tags, owner.tags).
		ext.Strings(),
		ext.Sets(),
		// numeric is a double and int8 an int; row.total > 100 must work.
		cel.CrossTypeNumericComparisons(true),
		cel.DefaultUTCTimeZone(true),
		// Refuse bad regexes and timestamp literals when the config loads,
		// not on the first row.
		cel.ExtendedValidations(),
	}
	when, err := cel.NewEnv(common...)
	if err != nil {
		return celEnvs{}, fmt.Errorf("build CEL environment: %w", err)
	}
	acl, err := when.Extend(cel.Variable("owner", row))
	if err != nil {
		return celEnvs{}, fmt.Errorf("build CEL environment: %w", err)
	}
	// A payload builds an object whose values differ in type, which the
	// extended validations' homogeneous-literal check would refuse.
	payload, err := cel.NewEnv(common[:len(common)-1]...)
	if err != nil {
		return celEnvs{}, fmt.Errorf("build CEL environment: %w", err)
	}
	return celEnvs{acl: acl, when: when, payload: payload}, nil
})

type celEnvs struct{ acl, when, payload *cel.Env }

// problem is one compile problem at a config file line.
type problem struct {
	line int
	text string
}

// compile parses, checks, costs and plans one expression written at line of
// the config file.
func compile(env *cel.Env, vars []string, src string, line int) (*rule, *celast.AST, []problem) {
	return compileFor(env, vars, src, line, false)
}

// compileFor is compile for a boolean condition, or with wantMap for an
// expression that builds a map (a payload).
func compileFor(env *cel.Env, vars []string, src string, line int, wantMap bool) (*rule, *celast.AST, []problem) {
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		var ps []problem
		for _, e := range iss.Errors() {
			msg := strings.Replace(e.Message, " (in container '')", "", 1)
			if strings.HasPrefix(msg, "undeclared reference to") {
				msg += "; the variables are " + strings.Join(vars, ", ")
			}
			// CEL columns are 0-based; editors count from 1.
			ps = append(ps, problem{
				line: fileLine(src, line, e.Location.Line()),
				text: fmt.Sprintf("column %d: %s", e.Location.Column()+1, msg),
			})
		}
		return nil, nil, ps
	}
	if t := ast.OutputType(); wantMap {
		if t.Kind() != types.MapKind && !t.IsExactType(cel.DynType) {
			return nil, nil, []problem{{line, fmt.Sprintf("gives %s, not a map (write an object, e.g. {\"id\": row.id})", t)}}
		}
	} else if !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return nil, nil, []problem{{line, fmt.Sprintf("gives %s, not a bool (write a condition, e.g. row.owner_id == owner.id)", t)}}
	}
	est, err := env.EstimateCost(ast, sizeEstimator{})
	if err != nil {
		return nil, nil, []problem{{line, "estimate cost: " + err.Error()}}
	}
	if est.Max > MaxCost {
		return nil, nil, []problem{{line, fmt.Sprintf(
			"too costly: estimated cost up to %d, more than %d (assuming strings and lists of %d elements); "+
				"avoid nesting comprehensions (exists, all, map, filter) in each other, use `in` or sets.intersects",
			est.Max, MaxCost, AssumedSize)}}
	}
	opts := []cel.ProgramOption{cel.EvalOptions(cel.OptOptimize)}
	if hasComprehension(ast.NativeRep()) {
		opts = append(opts, cel.CostLimit(RuntimeCostLimit))
	}
	prg, err := env.Program(ast, opts...)
	if err != nil {
		return nil, nil, []problem{{line, "plan: " + err.Error()}}
	}
	return &rule{prg: prg}, ast.NativeRep(), nil
}

// fileLine maps line exprLine (1-based) of src to a line of the config file,
// given the line of the YAML value. Plain and folded scalars arrive as one
// line; a literal block scalar (`acl: |`) keeps its newlines, and its text
// starts on the line after the indicator YAML reports.
func fileLine(src string, valueLine, exprLine int) int {
	if valueLine == 0 || exprLine < 1 {
		return valueLine
	}
	if strings.Contains(strings.TrimRight(src, "\n"), "\n") {
		return valueLine + exprLine
	}
	return valueLine
}

// sizeEstimator gives every value a rule reads from its variables the size
// AssumedSize, so that the estimate is finite: unknown sizes make cel-go's
// estimate unbounded even for `x in owner.tenants`.
type sizeEstimator struct{}

func (sizeEstimator) EstimateSize(cost.AstNode) *cost.SizeEstimate {
	return &cost.SizeEstimate{Min: 0, Max: AssumedSize}
}

func (sizeEstimator) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

// hasComprehension reports whether a contains a comprehension.
func hasComprehension(a *celast.AST) bool {
	found := false
	celast.PreOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		found = found || e.Kind() == celast.ComprehensionKind
	}))
	return found
}

// refColumns adds to cols the columns the expression reads by name through
// row, new or old.
func refColumns(a *celast.AST, cols map[string]bool) {
	selectColumns(a, cols, "row", "new", "old")
}

// oldColumns adds to cols the columns the expression reads as row.c, old.c,
// row['c'], old.?c and the like, and reports whether it uses row or old in
// any other way (passed whole, indexed by a computed key, or a comprehension
// variable of that name, which is conservatively counted).
func oldColumns(a *celast.AST, cols map[string]bool) (all bool) {
	return selectColumns(a, cols, "row", "old")
}

// selectColumns adds to cols the columns the expression reads from the
// variables vars by a constant name (v.c, v['c'], v.?c), and reports whether
// it uses one of them in any other way.
func selectColumns(a *celast.AST, cols map[string]bool, vars ...string) (all bool) {
	idents := map[int64]bool{} // ids of the vars' idents
	named := map[int64]bool{}  // those reached through a constant column name
	isVar := func(e celast.Expr) bool {
		return e.Kind() == celast.IdentKind && slices.Contains(vars, e.AsIdent())
	}
	celast.PreOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.IdentKind:
			if isVar(e) {
				idents[e.ID()] = true
			}
		case celast.SelectKind:
			if s := e.AsSelect(); isVar(s.Operand()) {
				named[s.Operand().ID()] = true
				cols[s.FieldName()] = true
			}
		case celast.CallKind:
			c := e.AsCall()
			switch c.FunctionName() {
			case operators.Index, operators.OptIndex, operators.OptSelect:
				args := c.Args()
				if len(args) == 2 && isVar(args[0]) && args[1].Kind() == celast.LiteralKind {
					if s, ok := args[1].AsLiteral().(types.String); ok {
						named[args[0].ID()] = true
						cols[string(s)] = true
					}
				}
			}
		}
	}))
	for id := range idents {
		if !named[id] {
			return true
		}
	}
	return false
}

// Columns returns, sorted, the columns table's rules (acl, derived events'
// conditions, payload) read by name through row, new or old.
func (r *Rules) Columns(table string) []string {
	t := r.tables[table]
	if t == nil {
		return nil
	}
	return slices.Clone(t.refCols)
}

// AllowEach is AllowMany recording, in failed (cleared first), the error of
// each owner whose evaluation failed, so that the caller can hold those
// deliveries rather than treat them as denied.
func (r *Rules) AllowEach(table string, in *Input, owners map[string]map[string]any, dst map[string]bool, failed map[string]error) error {
	clear(dst)
	clear(failed)
	t := r.tables[table]
	if t == nil || t.acl == nil {
		return fmt.Errorf("%w %s", ErrUnknownTable, table)
	}
	a, err := bind(t.acl, in)
	if err != nil {
		return err
	}
	defer release(a)
	for id, owner := range owners {
		a.owner = ownerOrEmpty(owner)
		ok, e := t.acl.eval(a)
		if e != nil {
			failed[id] = e
		}
		dst[id] = ok
	}
	return nil
}

// AlwaysAllows reports whether table's rule is the literal "true".
func (r *Rules) AlwaysAllows(table string) bool {
	t := r.tables[table]
	return t != nil && t.always
}

// NeedsFullIdentity reports whether table's rules (its acl and the `when` of
// its derived events) read row or old, and so may need the old row's
// non-key columns: a delete is judged on the old row, which PostgreSQL sends
// in full only under REPLICA IDENTITY FULL. The answer is conservative: it is
// true even when every column read is a key column; OldColumns has the
// detail for a caller that knows the replica identity. Unknown tables need
// nothing.
func (r *Rules) NeedsFullIdentity(table string) bool {
	t := r.tables[table]
	return t != nil && (t.oldAll || len(t.oldCols) > 0)
}

// OldColumns returns, sorted, the columns table's rules read through row or
// old, and all=true when a rule uses row or old other than by a constant
// column name (then every column may matter). With all false and every
// column in the replica identity, the default identity is enough.
func (r *Rules) OldColumns(table string) (columns []string, all bool) {
	t := r.tables[table]
	if t == nil {
		return nil, false
	}
	return slices.Clone(t.oldCols), t.oldAll
}

// opVals are the CEL values of `op`, built once so binding op allocates
// nothing.
var opVals = [...]ref.Val{
	change.Insert: types.String("insert"),
	change.Update: types.String("update"),
	change.Delete: types.String("delete"),
}

// emptyRow stands in for a missing row so that row.x fails with "no such
// key" rather than a type error. It is never written.
var emptyRow = map[string]any{}

// activation binds the variables of one evaluation from struct fields, so
// binding costs no map and no allocation: the interpreter asks for each
// variable a rule reads by name.
type activation struct {
	row, new, old any
	op, table     ref.Val
	owner         any
	// site is converted on first use, once per activation: most rules never
	// read it.
	site     ref.Val
	siteText string
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "row":
		return a.row, true
	case "owner":
		if a.owner == nil {
			return nil, false
		}
		return a.owner, true
	case "new":
		return a.new, true
	case "old":
		return a.old, true
	case "op":
		return a.op, true
	case "table":
		return a.table, true
	case "site":
		if a.site == nil {
			a.site = types.String(a.siteText)
		}
		return a.site, true
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() interpreter.Activation { return nil }

var activations = sync.Pool{New: func() any { return new(activation) }}

// bind fills a pooled activation for in under rule ru; release returns it.
func bind(ru *rule, in *Input) (*activation, error) {
	if in == nil {
		return nil, fmt.Errorf("%s: %w (nil input)", ru.field, ErrBadOp)
	}
	if in.Op < change.Insert || in.Op > change.Delete {
		return nil, fmt.Errorf("%s: %w (%d)", ru.field, ErrBadOp, in.Op)
	}
	if in.Table != "" && in.Table != ru.table {
		return nil, fmt.Errorf("%s: %w: %s, not %s", ru.field, ErrWrongTable, in.Table, ru.table)
	}
	a := activations.Get().(*activation)
	a.op, a.table, a.siteText, a.site = opVals[in.Op], ru.tval, in.Site, nil
	a.new, a.old = rowOrNull(in.New), rowOrNull(in.Old)
	row := in.New
	if in.Op == change.Delete {
		row = in.Old
	}
	if row == nil {
		row = emptyRow
	}
	a.row = row
	return a, nil
}

// release clears a's references, so the pool retains no rows or owners, and
// returns it to the pool.
func release(a *activation) {
	*a = activation{}
	activations.Put(a)
}

func rowOrNull(m map[string]any) any {
	if m == nil {
		return types.NullValue
	}
	return m
}

// eval runs ru with a and reads its verdict.
func (ru *rule) eval(a *activation) (bool, error) {
	out, _, err := ru.prg.Eval(a)
	if err != nil {
		return false, fmt.Errorf("evaluate %s: %w", ru.field, err)
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("evaluate %s: %w (got %s)", ru.field, ErrNotBool, out.Type().TypeName())
	}
	return bool(b), nil
}

// Allow reports whether the owner with the given attributes may see the row
// of in, by table's acl rule. A rule that fails to evaluate (a missing column
// or attribute, a type mismatch) denies: it returns false and the error, for
// the caller to count. owner should come from Owners, whose attributes are
// already CEL values; other Go values work but are converted on every call.
func (r *Rules) Allow(table string, in *Input, owner map[string]any) (bool, error) {
	t := r.tables[table]
	if t == nil || t.acl == nil {
		return false, fmt.Errorf("%w %s", ErrUnknownTable, table)
	}
	a, err := bind(t.acl, in)
	if err != nil {
		return false, err
	}
	a.owner = ownerOrEmpty(owner)
	ok, err := t.acl.eval(a)
	release(a)
	return ok, err
}

// AllowMany judges the row of in once for each owner of owners, keyed by
// owner id, and records the verdicts in dst, which it clears first: a row
// fanned out to many subscriptions of the same owners costs one evaluation
// per owner, not per subscription. Owners absent from owners are absent from
// dst, and so denied. A rule that fails for an owner denies it; AllowMany
// returns how many failed and the first error, for a metric and a log line.
func (r *Rules) AllowMany(table string, in *Input, owners map[string]map[string]any, dst map[string]bool) (failed int, err error) {
	clear(dst)
	t := r.tables[table]
	if t == nil || t.acl == nil {
		return len(owners), fmt.Errorf("%w %s", ErrUnknownTable, table)
	}
	a, err := bind(t.acl, in)
	if err != nil {
		return len(owners), err
	}
	defer release(a)
	for id, owner := range owners {
		a.owner = ownerOrEmpty(owner)
		ok, e := t.acl.eval(a)
		if e != nil {
			if failed == 0 {
				err = fmt.Errorf("owner %s: %w", id, e)
			}
			failed++
		}
		dst[id] = ok
	}
	return failed, err
}

func ownerOrEmpty(owner map[string]any) any {
	if owner == nil {
		return emptyRow
	}
	return owner
}

// When reports whether derived event's condition holds for in. It is false,
// without error, when in's op is not the event's `on`. A condition that fails
// to evaluate (old is null, a column was not sent) is false and returns the
// error, for the caller to count.
func (r *Rules) When(event string, in *Input) (bool, error) {
	ru := r.events[event]
	if ru == nil {
		return false, fmt.Errorf("%w %s", ErrUnknownEvent, event)
	}
	if in != nil && in.Op != ru.on {
		return false, nil
	}
	a, err := bind(ru, in)
	if err != nil {
		return false, err
	}
	ok, err := ru.eval(a)
	release(a)
	return ok, err
}

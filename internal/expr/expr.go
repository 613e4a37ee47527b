package expr

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
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
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/walhook/walhook/internal/change"
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

// Errors returned by evaluation.
var (
	// ErrWrongTable means an Input's Table is not the program's table.
	ErrWrongTable = errors.New("input is a row of another table")
	// ErrBadOp means an Input is nil or its Op is not insert, update,
	// delete or truncate.
	ErrBadOp = errors.New("input has no valid op")
	// ErrNotBool means a condition declared as dyn gave something other than
	// a bool for this input, e.g. `row.flag` on a text column.
	ErrNotBool = errors.New("rule did not give a bool")
)

// Kind is what an expression is for, which decides its variables and the
// type it must give.
type Kind int

const (
	// Condition is a derived event's `when`: a bool, without owner (an
	// event exists or not for everyone).
	Condition Kind = iota
	// Rule is a table's `acl`: a bool over the row and the owner.
	Rule
	// Payload is a table's `payload`: a map, the body's data.
	Payload
)

// Vars returns the variables an expression of kind k may read.
func (k Kind) Vars() []string {
	if k == Rule {
		return []string{"row", "new", "old", "op", "owner", "table", "site"}
	}
	return []string{"row", "new", "old", "op", "table", "site"}
}

// Program is one compiled expression of the config.
type Program struct {
	prg   cel.Program
	ast   *celast.AST
	kind  Kind
	src   string
	line  int     // the config line of the expression
	field string  // tables[0].acl, for errors
	table string  // schema.table
	tval  ref.Val // table as a CEL string, built once instead of per call
}

// Problem is one compile problem at a config file line.
type Problem struct {
	Line int
	Text string
}

// Compile parses, checks, costs and plans src, an expression of kind k
// written at line of the config file as field (tables[0].acl) of table.
func Compile(k Kind, table, field, src string, line int) (*Program, []Problem) {
	env, err := envs()
	if err != nil {
		return nil, []Problem{{line, "build CEL environment: " + err.Error()}}
	}
	e := env.when
	switch k {
	case Rule:
		e = env.acl
	case Payload:
		e = env.payload
	}
	p, ps := compileFor(e, k.Vars(), src, line, k == Payload)
	if len(ps) > 0 {
		return nil, ps
	}
	p.kind, p.src, p.line, p.field, p.table, p.tval = k, src, line, field, table, types.String(table)
	return p, nil
}

// Field is the config field the program was written at.
func (p *Program) Field() string { return p.field }

// Table is the table the program is for.
func (p *Program) Table() string { return p.table }

// IsTrue reports whether the expression is the literal true.
func (p *Program) IsTrue() bool { return strings.TrimSpace(p.src) == "true" }

// OldColumns adds to cols the columns the expression reads through row or
// old by a constant name, and reports whether it uses row or old in any
// other way (then every column may matter).
func (p *Program) OldColumns(cols map[string]bool) (all bool) {
	return selectColumns(p.ast, cols, "row", "old")
}

// Columns adds to cols the columns the expression reads through row, new or
// old by a constant name.
func (p *Program) Columns(cols map[string]bool) {
	selectColumns(p.ast, cols, "row", "new", "old")
}

// envs builds the three CEL environments once per process: building one
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
// compileFor compiles a boolean condition, or with wantMap an expression
// that builds a map (a payload).
func compileFor(env *cel.Env, vars []string, src string, line int, wantMap bool) (*Program, []Problem) {
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		var ps []Problem
		for _, e := range iss.Errors() {
			msg := strings.Replace(e.Message, " (in container '')", "", 1)
			if strings.HasPrefix(msg, "undeclared reference to") {
				msg += "; the variables are " + strings.Join(vars, ", ")
			}
			// CEL columns are 0-based; editors count from 1.
			ps = append(ps, Problem{
				Line: fileLine(src, line, e.Location.Line()),
				Text: fmt.Sprintf("column %d: %s", e.Location.Column()+1, msg),
			})
		}
		return nil, ps
	}
	if t := ast.OutputType(); wantMap {
		if t.Kind() != types.MapKind && !t.IsExactType(cel.DynType) {
			return nil, []Problem{{line, fmt.Sprintf("gives %s, not a map (write an object, e.g. {\"id\": row.id})", t)}}
		}
	} else if !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return nil, []Problem{{line, fmt.Sprintf("gives %s, not a bool (write a condition, e.g. row.owner_id == owner.id)", t)}}
	}
	est, err := env.EstimateCost(ast, sizeEstimator{})
	if err != nil {
		return nil, []Problem{{line, "estimate cost: " + err.Error()}}
	}
	if est.Max > MaxCost {
		return nil, []Problem{{line, fmt.Sprintf(
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
		return nil, []Problem{{line, "plan: " + err.Error()}}
	}
	return &Program{prg: prg, ast: ast.NativeRep()}, nil
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

// opVals are the CEL values of `op`, built once so binding op allocates
// nothing.
var opVals = [...]ref.Val{
	change.Insert:   types.String("insert"),
	change.Update:   types.String("update"),
	change.Delete:   types.String("delete"),
	change.Truncate: types.String("truncate"),
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
func bind(ru *Program, in *Input) (*activation, error) {
	if in == nil {
		return nil, fmt.Errorf("%s: %w (nil input)", ru.field, ErrBadOp)
	}
	if in.Op < change.Insert || in.Op > change.Truncate {
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
func (ru *Program) eval(a *activation) (bool, error) {
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

func ownerOrEmpty(owner map[string]any) any {
	if owner == nil {
		return emptyRow
	}
	return owner
}

// Bool evaluates a Condition or Rule for in (and owner, for a Rule). An
// expression that fails to evaluate gives false and the error.
func (p *Program) Bool(in *Input, owner map[string]any) (bool, error) {
	a, err := bind(p, in)
	if err != nil {
		return false, err
	}
	if p.kind == Rule {
		a.owner = ownerOrEmpty(owner)
	}
	ok, err := p.eval(a)
	release(a)
	return ok, err
}

// Each evaluates a Rule for in once per owner of owners, binding the row
// once, and calls fn with each verdict.
func (p *Program) Each(in *Input, owners map[string]map[string]any, fn func(id string, ok bool, err error)) error {
	a, err := bind(p, in)
	if err != nil {
		return err
	}
	defer release(a)
	for id, owner := range owners {
		a.owner = ownerOrEmpty(owner)
		ok, e := p.eval(a)
		fn(id, ok, e)
	}
	return nil
}

var jsonValueType = reflect.TypeFor[*structpb.Value]()

// JSON evaluates a Payload for in and returns the JSON object it builds,
// converted by CEL's JSON rules (timestamps as RFC 3339 strings, integers
// beyond ±2^53 as strings, numeric columns are doubles).
func (p *Program) JSON(in *Input) ([]byte, error) {
	a, err := bind(p, in)
	if err != nil {
		return nil, err
	}
	out, _, err := p.prg.Eval(a)
	release(a)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.field, err)
	}
	v, err := out.ConvertToNative(jsonValueType)
	if err != nil {
		return nil, fmt.Errorf("%s: convert to JSON: %w", p.field, err)
	}
	sv := v.(*structpb.Value)
	if sv.GetStructValue() == nil {
		return nil, fmt.Errorf("%s: gave %s, not an object", p.field, out.Type())
	}
	b, err := protojson.Marshal(sv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.field, err)
	}
	// protojson varies its spacing on purpose; bodies should not.
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, fmt.Errorf("%s: %w", p.field, err)
	}
	return buf.Bytes(), nil
}

// Reference is one column or owner attribute an expression reads by a
// constant name: row.status, old['total'], has(new.paid_at), owner.?tenants.
type Reference struct {
	Table  string // schema.table whose expression it is
	Field  string // tables[0].acl, tables[0].events[1].when, tables[0].payload
	Line   int    // line of the config file
	Column int    // 1-based column within the expression
	Var    string // row, new, old or owner
	Name   string // the column or attribute
}

// References returns the constant column and attribute names the program
// reads through row, new, old and owner, in source order, with their config
// lines. A name computed at run time (row[key]) is not a reference.
func (p *Program) References() []Reference {
	out := references(p.ast)
	for i := range out {
		out[i].Table, out[i].Field, out[i].Line = p.table, p.field, fileLine(p.src, p.line, out[i].Line)
	}
	return out
}

// references walks a compiled expression for row.c, new.c, old.c, owner.c,
// x['c'], x.?c and has(x.c). Line is the 1-based line within the expression,
// for fileLine. A variable shadowed by a comprehension variable of the same
// name ([1].exists(row, ...)) is skipped in the whole expression: telling
// the two apart is not worth the code for a name nobody should reuse.
func references(a *celast.AST) []Reference {
	shadowed := map[string]bool{}
	celast.PreOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if e.Kind() == celast.ComprehensionKind {
			c := e.AsComprehension()
			shadowed[c.IterVar()] = true
			if c.HasIterVar2() {
				shadowed[c.IterVar2()] = true
			}
		}
	}))
	variable := func(e celast.Expr) string {
		if e.Kind() != celast.IdentKind {
			return ""
		}
		switch n := e.AsIdent(); n {
		case "row", "new", "old", "owner":
			if !shadowed[n] {
				return n
			}
		}
		return ""
	}
	var out []Reference
	at := func(id int64, v, name string) {
		loc := a.SourceInfo().GetStartLocation(id)
		out = append(out, Reference{Var: v, Name: name, Line: loc.Line(), Column: loc.Column() + 1})
	}
	celast.PreOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.SelectKind:
			if s := e.AsSelect(); variable(s.Operand()) != "" {
				at(s.Operand().ID(), variable(s.Operand()), s.FieldName())
			}
		case celast.CallKind:
			c := e.AsCall()
			switch c.FunctionName() {
			case operators.Index, operators.OptIndex, operators.OptSelect:
				args := c.Args()
				if len(args) == 2 && variable(args[0]) != "" && args[1].Kind() == celast.LiteralKind {
					if s, ok := args[1].AsLiteral().(types.String); ok {
						at(args[0].ID(), variable(args[0]), string(s))
					}
				}
			}
		}
	}))
	slices.SortStableFunc(out, func(x, y Reference) int {
		return cmp.Or(cmp.Compare(x.Line, y.Line), cmp.Compare(x.Column, y.Column))
	})
	return out
}

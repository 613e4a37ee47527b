package acl

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"

	"github.com/walhook/walhook/mapping"
)

// Reference is one column or owner attribute an expression of the config
// reads by a constant name: row.status, old['total'], has(new.paid_at),
// owner.?tenants.
type Reference struct {
	Table  string // schema.table whose expression it is
	Field  string // tables[0].acl, tables[0].events[1].when, tables[0].payload
	Line   int    // line of the config file
	Column int    // 1-based column within the expression
	Var    string // row, new, old or owner
	Name   string // the column or attribute
}

// References returns every constant column and attribute name the config's
// expressions (acl, events[].when, payload) read through row, new, old and
// owner, in config order. A name computed at run time (row[key]) is not a
// reference and is not listed. The config must compile (Compile's errors are
// returned otherwise).
func References(cfg *mapping.Config) ([]Reference, error) {
	if _, err := Compile(cfg); err != nil {
		return nil, err
	}
	env, err := envs()
	if err != nil {
		return nil, fmt.Errorf("compile acl rules: %w", err)
	}
	var out []Reference
	add := func(e *cel.Env, table, field, src string, line int) error {
		ast, iss := e.Compile(src)
		if iss != nil && iss.Err() != nil {
			return fmt.Errorf("%s: %w", field, iss.Err())
		}
		for _, r := range references(ast.NativeRep()) {
			r.Table, r.Field, r.Line = table, field, fileLine(src, line, r.Line)
			out = append(out, r)
		}
		return nil
	}
	for i, t := range cfg.Tables {
		if t == nil {
			continue
		}
		path := "tables[" + strconv.Itoa(i) + "]"
		if err := add(env.acl, t.Table, path+".acl", t.ACL, cmp.Or(t.ACLLine, t.Line)); err != nil {
			return nil, err
		}
		for j, e := range t.Events {
			if e == nil {
				continue
			}
			if err := add(env.when, t.Table, path+".events["+strconv.Itoa(j)+"].when", e.When, cmp.Or(e.WhenLine, e.Line)); err != nil {
				return nil, err
			}
		}
		if strings.TrimSpace(t.Payload) != "" {
			if err := add(env.payload, t.Table, path+".payload", t.Payload, cmp.Or(t.PayloadLine, t.Line)); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
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

// CheckColumns checks the column and attribute names the config's
// expressions read (References) against the database: row, new and old
// against cat's columns of the expression's table, owner against owner, the
// columns owners.query returns (["id"] for a config without owners; nil to
// skip the owner check, e.g. when the query could not be described). Tables
// missing from cat are skipped: CheckCatalog reports them. Problems are
// mapping.Errors naming the line, the field and a close match.
func CheckColumns(cfg *mapping.Config, cat mapping.Catalog, owner []string) error {
	refs, err := References(cfg)
	if err != nil {
		return err
	}
	var errs mapping.Errors
	for _, r := range refs {
		var names []string
		what := ""
		if r.Var == "owner" {
			if owner == nil {
				continue
			}
			names = owner
			what = "owners.query returns no column"
			if cfg.Owners == nil {
				what = "without an owners block owner has only id, no attribute"
			}
		} else {
			cols, ok := cat[r.Table]
			if !ok {
				continue
			}
			for _, c := range cols {
				names = append(names, c.Name)
			}
			what = r.Table + " has no column"
		}
		if slices.Contains(names, r.Name) {
			continue
		}
		msg := fmt.Sprintf("column %d: %s.%s: %s %q", r.Column, r.Var, r.Name, what, r.Name)
		if s := mapping.Suggest(r.Name, names); s != "" {
			msg += s
		} else if len(names) <= 12 {
			msg += " (it has: " + strings.Join(names, ", ") + ")"
		}
		errs = append(errs, mapping.ConfigError{File: cfg.File, Line: r.Line, Field: r.Field, Problem: msg})
	}
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b mapping.ConfigError) int { return cmp.Compare(a.Line, b.Line) })
	return errs
}

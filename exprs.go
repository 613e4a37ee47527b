package walhook

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/internal/expr"
	"github.com/walhook/walhook/mapping"
)

// CheckConfig compiles cfg as New does — its tables, derived events,
// payloads and acl rules — without a database; problems are mapping.Errors
// naming file:line and field.
func CheckConfig(cfg *mapping.Config) error {
	_, _, err := compileConfig(cfg)
	return err
}

// compileConfig compiles cfg's mapping (derived events and payloads
// included) and its acl rules, reporting every problem of both at once.
func compileConfig(cfg *mapping.Config) (*mapping.Mapper, *acl.Rules, error) {
	mapper, merr := mapping.New(cfg)
	rules, aerr := acl.Compile(cfg.File, aclTables(cfg))
	var errs mapping.Errors
	for _, err := range []error{merr, aerr} {
		var e mapping.Errors
		switch {
		case err == nil:
		case errors.As(err, &e):
			errs = append(errs, e...)
		default:
			return nil, nil, err
		}
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b mapping.ConfigError) int { return cmp.Compare(a.Line, b.Line) })
		return nil, nil, errs
	}
	return mapper, rules, nil
}

// aclTables lists cfg's acl rules for acl.Compile.
func aclTables(cfg *mapping.Config) []acl.Table {
	out := make([]acl.Table, 0, len(cfg.Tables))
	for i, t := range cfg.Tables {
		if t == nil {
			continue
		}
		out = append(out, acl.Table{Name: t.Table, Rule: t.ACL, Line: cmp.Or(t.ACLLine, t.Line), Field: "tables[" + strconv.Itoa(i) + "].acl"})
	}
	return out
}

// references lists what every expression of the config reads by name, in
// config order.
func references(mapper *mapping.Mapper, rules *acl.Rules) []expr.Reference {
	var out []expr.Reference
	for _, p := range append(rules.Programs(), mapper.Programs()...) {
		out = append(out, p.References()...)
	}
	slices.SortStableFunc(out, func(a, b expr.Reference) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	return out
}

// oldColumns is what table's expressions (acl, derived events, payload)
// read through row or old, and whether one reads them as a whole.
func oldColumns(mapper *mapping.Mapper, rules *acl.Rules, table string) ([]string, bool) {
	a, aall := rules.OldColumns(table)
	m, mall := mapper.OldColumns(table)
	return slices.Compact(slices.Sorted(slices.Values(append(a, m...)))), aall || mall
}

// exprColumns is what table's expressions read through row, new or old.
func exprColumns(mapper *mapping.Mapper, rules *acl.Rules, table string) []string {
	return slices.Compact(slices.Sorted(slices.Values(append(rules.Columns(table), mapper.Columns(table)...))))
}

// checkColumns checks the column and attribute names the config's
// expressions read (refs) against the database: row, new and old
// against cat's columns of the expression's table, owner against owner, the
// columns owners.query returns (["id"] for a config without owners; nil to
// skip the owner check, e.g. when the query could not be described). Tables
// missing from cat are skipped: CheckCatalog reports them. Problems are
// mapping.Errors naming the line, the field and a close match.
func checkColumns(cfg *mapping.Config, refs []expr.Reference, cat mapping.Catalog, owner []string) error {
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

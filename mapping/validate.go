package mapping

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ops are the operations a table can map, in the order events are reported.
var ops = []string{"insert", "update", "delete"}

// line returns the line of the first of the table's settings that has one,
// falling back to the table's own line (a Config built in code has none).
func (t *TableConfig) line(fields ...string) int {
	for _, f := range fields {
		if l := t.lines[f]; l > 0 {
			return l
		}
	}
	return t.Line
}

// producer records where an event name was first defined, to report
// duplicates against it.
type producer struct {
	field string
	line  int
}

// validateTables checks the table mappings. It runs on the struct so that New
// can apply it to a Config built in code as well as to a parsed one.
func validateTables(file string, tables []*TableConfig) Errors {
	c := collector{file: file}
	seenTable := map[string]producer{}
	seenEvent := map[string]producer{}
	claim := func(name, field string, line int) {
		if first, dup := seenEvent[name]; dup {
			c.add(line, field, fmt.Sprintf("event %q is already produced by %s (line %d); event names must be unique", name, first.field, first.line))
			return
		}
		seenEvent[name] = producer{field, line}
	}
	for i, t := range tables {
		path := index("tables", i)
		if t == nil {
			c.add(0, path, "nil table")
			continue
		}
		switch f := path + ".table"; {
		case t.Table == "":
			c.add(t.Line, f, "required: the schema-qualified table to map, e.g. public.orders")
		case !qualified(t.Table):
			c.add(t.line("table"), f, fmt.Sprintf("%q is not schema-qualified (want schema.table, e.g. public.%s)", t.Table, t.Table))
		default:
			if first, dup := seenTable[t.Table]; dup {
				c.add(t.line("table"), f, fmt.Sprintf("table %s is already mapped by %s (line %d); map each table once and add derived events to it", t.Table, first.field, first.line))
			} else {
				seenTable[t.Table] = producer{path, t.line("table")}
			}
		}
		nounOK := false
		switch f := path + ".noun"; {
		case t.Noun == "":
			c.add(t.Line, f, "required: the event prefix, e.g. order for order.created")
		case !nounRE.MatchString(t.Noun):
			c.add(t.line("noun"), f, fmt.Sprintf("invalid noun %q (want lower-case letters, digits and _, starting with a letter)", t.Noun))
		default:
			nounOK = true
		}
		if strings.TrimSpace(t.ACL) == "" {
			c.add(t.line("acl"), path+".acl", `required: a CEL rule deciding which subscribers may see a row ("true" delivers to every subscriber)`)
		}

		if t.Key != nil && len(t.Key) == 0 {
			c.add(t.line("key"), path+".key", "empty (omit key to use the primary key)")
		}
		checkColumnList(&c, t, path, "key", t.Key)
		checkColumnList(&c, t, path, "columns.include", t.Columns.Include)
		checkColumnList(&c, t, path, "columns.exclude", t.Columns.Exclude)
		if len(t.Columns.Include) > 0 && len(t.Columns.Exclude) > 0 {
			c.add(t.line("columns.exclude", "columns"), path+".columns", "set include or exclude, not both")
		} else {
			checkKeyKept(&c, t, path, t.Key)
		}

		verbs := t.Verbs
		if verbs == nil {
			verbs = DefaultVerbs()
		}
		badVerb := false
		for _, op := range sortedOps(verbs) {
			f := path + ".verbs." + op
			verb := verbs[op]
			if !slices.Contains(ops, op) && op != VerbExisting && op != VerbTruncate {
				badVerb = true
				c.add(t.line("verbs."+op, "verbs"), f, fmt.Sprintf("unknown operation %q (want insert, update, delete, truncate or existing)", op))
				continue
			}
			if verb == "" || !nounOK {
				continue
			}
			name := t.Noun + "." + verb
			if !eventRE.MatchString(name) {
				c.add(t.line("verbs."+op, "verbs"), f, fmt.Sprintf("verb %q makes event %q, which is not of the form noun.verb (lower-case letters, digits and _)", verb, name))
				continue
			}
			// Blame the noun when the verbs are the defaults: that is what
			// the operator wrote.
			field, line := f, t.line("verbs."+op)
			if t.lines["verbs"] == 0 && t.lines["verbs."+op] == 0 {
				field, line = path+".noun", t.line("noun")
			}
			claim(name, field, line)
		}
		if _, named := verbs[VerbExisting]; !named && nounOK {
			// Every table offers <noun>.existing, a backfill's event.
			claim(t.Noun+"."+VerbExisting, path+".noun", t.line("noun"))
		}

		// Skipped after a bad verb, which already explains the missing event.
		if !badVerb && len(t.Events) == 0 && verbs[VerbTruncate] == "" && !slices.ContainsFunc(ops, func(op string) bool { return verbs[op] != "" }) {
			c.add(t.line("verbs"), path+".verbs", "the table produces no events (no verbs and no derived events); remove it or add some")
		}

		for j, e := range t.Events {
			ep := index(path+".events", j)
			rel := index("events", j)
			if e == nil {
				c.add(t.Line, ep, "nil event")
				continue
			}
			at := func(key string) int {
				if l := t.lines[rel+"."+key]; l > 0 {
					return l
				}
				if e.Line > 0 {
					return e.Line
				}
				return t.Line
			}
			switch {
			case e.Name == "":
				c.add(at("name"), ep+".name", "required: the event name, e.g. order.paid")
			case !eventRE.MatchString(e.Name):
				c.add(at("name"), ep+".name", fmt.Sprintf("invalid event name %q (want noun.verb in lower-case letters, digits and _, e.g. order.paid)", e.Name))
			default:
				claim(e.Name, ep+".name", at("name"))
			}
			switch {
			case e.On == "":
				c.add(at("on"), ep+".on", "required: the operation to watch (insert, update or delete)")
			case !slices.Contains(ops, e.On):
				c.add(at("on"), ep+".on", fmt.Sprintf("unknown operation %q (want insert, update or delete)", e.On))
			}
			if strings.TrimSpace(e.When) == "" {
				on := e.On
				if on == "" {
					on = "change"
				}
				c.add(at("when"), ep+".when", fmt.Sprintf(`required: a CEL condition, e.g. new.status == 'paid' && old.status != 'paid' ("true" fires on every %s)`, on))
			}
		}
	}
	return c.errs
}

// sortedOps returns the map's operations: insert, update, delete in that
// order, then the others (truncate, existing, unknown ones) alphabetically,
// so errors are stable.
func sortedOps(verbs map[string]string) []string {
	var known, unknown []string
	for _, op := range ops {
		if _, ok := verbs[op]; ok {
			known = append(known, op)
		}
	}
	for op := range verbs {
		if !slices.Contains(ops, op) {
			unknown = append(unknown, op)
		}
	}
	slices.Sort(unknown)
	return append(known, unknown...)
}

func checkColumnList(c *collector, t *TableConfig, path, field string, cols []string) {
	seen := map[string]int{}
	for i, col := range cols {
		f := index(path+"."+field, i)
		line := t.line(index(field, i), field)
		switch prev, dup := seen[col]; {
		case col == "":
			c.add(line, f, "empty column name")
		case dup:
			c.add(line, f, fmt.Sprintf("column %q is listed twice (first at %s)", col, index(path+"."+field, prev)))
		default:
			seen[col] = i
		}
	}
}

// checkKeyKept refuses a column filter that drops a key column: receivers
// need the key to tell which row an event is about, and deletes carry
// little else.
func checkKeyKept(c *collector, t *TableConfig, path string, key []string) {
	for i, col := range t.Columns.Exclude {
		if slices.Contains(key, col) {
			c.add(t.line(index("columns.exclude", i), "columns.exclude"), index(path+".columns.exclude", i),
				fmt.Sprintf("%q is a key column and cannot be excluded: receivers need the key to identify the row", col))
		}
	}
	if len(t.Columns.Include) == 0 {
		return
	}
	for _, col := range key {
		if !slices.Contains(t.Columns.Include, col) {
			c.add(t.line("columns.include"), path+".columns.include",
				fmt.Sprintf("leaves out key column %q: receivers need the key to identify the row", col))
		}
	}
}

// Catalog describes the database's tables for CheckCatalog: "schema.table"
// to its columns, in column order. The caller (cmd, via cdc) builds it from
// pg_catalog so that this package does no I/O.
type Catalog map[string][]CatalogColumn

// CatalogColumn is one column of a catalog table.
type CatalogColumn struct {
	Name       string
	Type       string
	NotNull    bool
	PrimaryKey bool
}

// CheckCatalog checks the config against the database's tables: that mapped
// and watched tables exist, that key, include, exclude and site name existing
// columns, and that a table without `key:` has a primary key. Problems are
// reported like Parse's, as Errors.
func (c *Config) CheckCatalog(cat Catalog) error {
	col := collector{file: c.File}
	for i, t := range c.Tables {
		path := index("tables", i)
		cols, ok := cat[t.Table]
		if !ok {
			col.add(t.line("table"), path+".table", fmt.Sprintf("table %s does not exist%s", t.Table, suggestTable(t.Table, cat)))
			continue
		}
		names := make([]string, len(cols))
		var pk []string
		for j, cc := range cols {
			names[j] = cc.Name
			if cc.PrimaryKey {
				pk = append(pk, cc.Name)
			}
		}
		unknown := func(field string, list []string) {
			for j, name := range list {
				if !slices.Contains(names, name) {
					col.add(t.line(index(field, j), field), index(path+"."+field, j), unknownColumn(name, t.Table, names))
				}
			}
		}
		unknown("key", t.Key)
		unknown("columns.include", t.Columns.Include)
		unknown("columns.exclude", t.Columns.Exclude)
		if t.Site != "" && !slices.Contains(names, t.Site) {
			col.add(t.line("site"), path+".site", unknownColumn(t.Site, t.Table, names))
		}
		if len(t.Key) == 0 {
			if len(pk) == 0 {
				col.add(t.Line, path+".key", fmt.Sprintf("%s has no primary key; name the columns that identify a row, e.g. key: [id]", t.Table))
			} else if len(t.Columns.Include) == 0 || len(t.Columns.Exclude) == 0 {
				// validateTables could not check the filter against a
				// primary key it did not know.
				checkKeyKept(&col, t, path, pk)
			}
		}
	}
	if o := c.Owners; o != nil {
		for i, w := range o.Watch {
			if _, ok := cat[w]; !ok {
				line := o.Line
				if i < len(o.watchLines) {
					line = o.watchLines[i]
				}
				col.add(line, index("owners.watch", i), fmt.Sprintf("table %s does not exist%s", w, suggestTable(w, cat)))
			}
		}
		if r := o.RemoveOnDelete; r != nil {
			if cols, ok := cat[r.Table]; ok {
				var names []string
				for _, cc := range cols {
					names = append(names, cc.Name)
				}
				if !slices.Contains(names, r.Column) {
					col.add(cmp.Or(r.ColumnLine, r.Line), "owners.remove_on_delete.column", unknownColumn(r.Column, r.Table, names))
				}
			}
		}
	}
	return col.err()
}

func unknownColumn(name, table string, names []string) string {
	msg := fmt.Sprintf("column %q does not exist in %s", name, table)
	if s := suggest(name, names); s != "" {
		return msg + s
	}
	if len(names) <= 12 {
		return msg + " (columns: " + strings.Join(names, ", ") + ")"
	}
	return msg
}

// suggestTable points at a table of the same name in another schema or with
// other letter case: the usual mistakes (unquoted identifiers fold to lower
// case in PostgreSQL, and public is not the only schema).
func suggestTable(name string, cat Catalog) string {
	_, table, _ := strings.Cut(name, ".")
	var candidates []string
	for q := range cat {
		_, t, _ := strings.Cut(q, ".")
		if strings.EqualFold(q, name) || t == table {
			candidates = append(candidates, q)
		}
	}
	if len(candidates) == 0 {
		var all []string
		for q := range cat {
			all = append(all, q)
		}
		slices.Sort(all)
		return suggest(name, all)
	}
	slices.Sort(candidates)
	quoted := make([]string, len(candidates))
	for i, q := range candidates {
		quoted[i] = strconv.Quote(q)
	}
	return "; did you mean " + strings.Join(quoted, " or ") + "?"
}

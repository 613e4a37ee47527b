package walhook

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/expr"
	"github.com/walhook/walhook/mapping"
)

// CheckOptions says what Check checks besides the config.
type CheckOptions struct {
	// Slot is the replication slot walhook uses (cdc.DefaultSlot when
	// empty): it must belong to this database, or there must be room to
	// create it.
	Slot string
}

// DatabaseError is a problem with the database or server rather than with
// the config: wal_level, free slots, privileges, a slot of another database.
// Problem says what is wrong and how to fix it.
type DatabaseError struct {
	Problem string
}

func (e DatabaseError) Error() string { return e.Problem }

// Check checks cfg against the database conn is connected to, without
// changing anything, so that a mistake is caught before it runs:
//
//   - the config's tables and columns exist (CheckCatalog);
//   - every column an expression (acl, events[].when, payload) reads as
//     row.x, new.x, old.x, row['x'], has(row.x), row.?x exists in its table,
//     and every owner.x is a column owners.query returns;
//   - owners.query prepares, takes $1 as text[] and returns a text id;
//   - wal_level is logical; the slot, if it exists, is a pgoutput slot of
//     this database and not lost, and if it does not, a slot is free;
//   - the role may replicate (REPLICATION or superuser) and read the
//     owners.watch tables.
//
// Config problems are mapping.ConfigError (file:line: field: problem),
// database problems DatabaseError; err joins them all (errors.As finds
// mapping.Errors). Warnings are what does not stop walhook but loses
// something: a table whose replica identity does not carry the old columns
// its rules read (install sets REPLICA IDENTITY FULL), a role that cannot
// SELECT a mapped table (backfill needs it), no free WAL sender.
func Check(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config, opts CheckOptions) (warnings []string, err error) {
	warnings, needs, err := check(ctx, conn, cfg, opts)
	if err != nil {
		return nil, err
	}
	for _, n := range needs {
		warnings = append(warnings, n.warning(cfg.File))
	}
	drift, err := identityDrift(ctx, conn, cfg.Tables)
	if err != nil {
		return nil, err
	}
	for _, d := range drift {
		warnings = append(warnings, fmt.Sprintf("%s: %s is not set (walhook install sets it)", cfg.File, d))
	}
	return warnings, nil
}

// check is Check with the replica identity install would set kept apart
// from the other warnings.
func check(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config, opts CheckOptions) ([]string, []identityNeed, error) {
	if opts.Slot == "" {
		opts.Slot = cdc.DefaultSlot
	}
	mapper, rules, err := compileConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	refs := references(mapper, rules)
	cat, err := readCatalog(ctx, conn, cfg)
	if err != nil {
		return nil, nil, err
	}
	var cfgErrs mapping.Errors
	collect := func(err error) error {
		var errs mapping.Errors
		switch {
		case err == nil:
		case errors.As(err, &errs):
			cfgErrs = append(cfgErrs, errs...)
		default:
			return err
		}
		return nil
	}
	if err := collect(cfg.CheckCatalog(cat)); err != nil {
		return nil, nil, err
	}
	if err := collect(checkPartitionMapping(ctx, conn, cfg)); err != nil {
		return nil, nil, err
	}
	ownerCols, err := describeOwners(ctx, conn, cfg)
	if err := collect(err); err != nil {
		return nil, nil, err
	}
	if err := collect(checkColumns(cfg, refs, cat, ownerCols)); err != nil {
		return nil, nil, err
	}
	slices.SortStableFunc(cfgErrs, func(a, b mapping.ConfigError) int { return cmp.Compare(a.Line, b.Line) })

	warnings, dbErrs, err := checkServer(ctx, conn, cfg, cat, opts.Slot)
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	if len(cfgErrs) > 0 {
		errs = append(errs, cfgErrs)
	}
	errs = append(errs, dbErrs...)
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	needs, err := identityNeeds(ctx, conn, cfg, mapper, rules, refs)
	if err != nil {
		return nil, nil, err
	}
	return warnings, needs, nil
}

// readCatalog reads the columns of the config's mapped and watched tables.
func readCatalog(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) (mapping.Catalog, error) {
	var names []string
	for _, t := range cfg.Tables {
		names = append(names, t.Table)
	}
	if cfg.Owners != nil {
		names = append(names, cfg.Owners.Watch...)
	}
	rows, err := conn.Query(ctx, `
		SELECT n.nspname || '.' || c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
			coalesce(a.attnum = ANY(i.indkey), false)
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
		WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY($1)
		ORDER BY 1, a.attnum`, names)
	if err != nil {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	cat := mapping.Catalog{}
	var table string
	var col mapping.CatalogColumn
	_, err = pgx.ForEachRow(rows, []any{&table, &col.Name, &col.Type, &col.NotNull, &col.PrimaryKey}, func() error {
		cat[table] = append(cat[table], col)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	return cat, nil
}

// describeOwners prepares owners.query and returns the columns it gives,
// the owner attributes rules may read: ["id"] without an owners block, nil
// (unknown) when the query is wrong, which is reported as mapping.Errors
// at owners.query's line.
func describeOwners(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) ([]string, error) {
	o := cfg.Owners
	if o == nil || strings.TrimSpace(o.Query) == "" {
		return []string{"id"}, nil
	}
	problem := func(format string, args ...any) error {
		return mapping.Errors{{File: cfg.File, Line: cmp.Or(o.QueryLine, o.Line), Field: "owners.query", Problem: fmt.Sprintf(format, args...)}}
	}
	// The unnamed statement: nothing is left behind, the next query
	// replaces it.
	sd, err := conn.PgConn().Prepare(ctx, "", o.Query, nil)
	if err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			return nil, fmt.Errorf("prepare owners.query: %w", err)
		}
		msg := pgErr.Message
		if pgErr.Position > 0 {
			msg += fmt.Sprintf(" (at character %d of the query)", pgErr.Position)
		}
		if pgErr.Hint != "" {
			msg += "; " + pgErr.Hint
		}
		return nil, problem("does not prepare: %s (SQLSTATE %s)", msg, pgErr.Code)
	}
	typeName := func(oid uint32) string {
		var name string
		if err := conn.QueryRow(ctx, `SELECT format_type($1, NULL)`, oid).Scan(&name); err != nil {
			return fmt.Sprintf("type %d", oid)
		}
		return name
	}
	if len(sd.ParamOIDs) != 1 {
		return nil, problem("takes %d parameters; want one, $1, the owner ids as text[] (e.g. WHERE id::text = ANY($1))", len(sd.ParamOIDs))
	}
	if p := sd.ParamOIDs[0]; p != pgtype.TextArrayOID {
		return nil, problem("$1 is %s; it must be text[], the owner ids as text (write e.g. WHERE id::text = ANY($1), or $1::text[])", typeName(p))
	}
	var cols []string
	var errs []string
	idType := uint32(0)
	for _, f := range sd.Fields {
		if f.Name == "id" {
			idType = f.DataTypeOID
		}
		if slices.Contains(cols, f.Name) {
			errs = append(errs, fmt.Sprintf("returns two columns named %q; name each attribute once", f.Name))
		}
		cols = append(cols, f.Name)
	}
	switch {
	case !slices.Contains(cols, "id"):
		errs = append(errs, "returns no id column: return the owner id as text named id, e.g. SELECT id::text AS id, ...")
	case idType != pgtype.TextOID && idType != pgtype.VarcharOID:
		errs = append(errs, fmt.Sprintf("its id column is %s; want text, the owner id as subscriptions name it (write id::text AS id)", typeName(idType)))
	}
	if len(errs) > 0 {
		return nil, problem("%s", strings.Join(errs, "; "))
	}
	return cols, nil
}

// checkServer checks wal_level, the slot, free slots and senders, and the
// role's privileges.
func checkServer(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config, cat mapping.Catalog, slot string) (warnings []string, errs []error, err error) {
	fail := func(format string, args ...any) {
		errs = append(errs, DatabaseError{Problem: fmt.Sprintf(format, args...)})
	}
	var (
		walLevel, user, db         string
		maxSlots, maxSenders       int
		usedSlots, usedSenders     int
		superuser, replication     bool
		slotExists, slotActive     bool
		slotType, slotDB, slotPlug string
		slotWAL                    *string
	)
	err = conn.QueryRow(ctx, `SELECT current_setting('wal_level'), current_user, current_database(),
			current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int,
			(SELECT count(*) FROM pg_replication_slots)::int,
			(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
			r.rolsuper, r.rolreplication
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&walLevel, &user, &db, &maxSlots, &maxSenders,
		&usedSlots, &usedSenders, &superuser, &replication)
	if err != nil {
		return nil, nil, fmt.Errorf("read server settings: %w", err)
	}
	err = conn.QueryRow(ctx, `SELECT slot_type, coalesce(database, ''), coalesce(plugin, ''), active, wal_status
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&slotType, &slotDB, &slotPlug, &slotActive, &slotWAL)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, nil, fmt.Errorf("read slot %q: %w", slot, err)
	default:
		slotExists = true
	}

	if walLevel != "logical" {
		fail("wal_level is %s; walhook needs logical decoding: run ALTER SYSTEM SET wal_level = logical as a superuser, then restart PostgreSQL (a reload is not enough)", walLevel)
	}
	if !superuser && !replication {
		fail("role %s may not replicate: run ALTER ROLE %s REPLICATION as a superuser", user, pgx.Identifier{user}.Sanitize())
	}
	switch {
	case !slotExists:
		if usedSlots >= maxSlots {
			fail("no replication slot is free to create slot %q: max_replication_slots = %d and %d are used; drop an unused slot (SELECT slot_name, database, active FROM pg_replication_slots) or raise it (ALTER SYSTEM SET max_replication_slots = %d, then restart PostgreSQL)",
				slot, maxSlots, usedSlots, maxSlots+1)
		}
	case slotType != "logical":
		fail("replication slot %q is a %s slot; walhook needs a logical one: choose another --slot, or drop it (SELECT pg_drop_replication_slot('%s')) if it is unused", slot, slotType, slot)
	case slotDB != db:
		fail("replication slot %q belongs to database %s, not %s (slots are per cluster, and a slot streams one database): give this database its own slot, e.g. --slot %s",
			slot, slotDB, db, suggestSlot(slot, db))
	case slotPlug != "pgoutput":
		fail("replication slot %q uses plugin %s, not pgoutput: choose another --slot, or drop it (SELECT pg_drop_replication_slot('%s')) if it is unused", slot, slotPlug, slot)
	case slotWAL != nil && *slotWAL == "lost":
		fail("replication slot %q is lost (wal_status = lost): PostgreSQL removed WAL it still needed, so changes were missed; drop it (SELECT pg_drop_replication_slot('%s')) and run walhook install to create it again, from now", slot, slot)
	}
	if !slotExists || !slotActive {
		switch {
		case maxSenders == 0:
			fail("max_wal_senders = 0: walhook run streams through a WAL sender; run ALTER SYSTEM SET max_wal_senders = 10, then restart PostgreSQL")
		case usedSenders >= maxSenders:
			warnings = append(warnings, fmt.Sprintf("no WAL sender is free (max_wal_senders = %d, %d in use): walhook run cannot stream until one is; raise max_wal_senders (needs a restart)", maxSenders, usedSenders))
		}
	}

	// SELECT is checked on the tables that exist; CheckCatalog names the
	// others.
	var tables []string
	for _, t := range cfg.Tables {
		tables = append(tables, t.Table)
	}
	if cfg.Owners != nil {
		tables = append(tables, cfg.Owners.Watch...)
	}
	denied := map[string]bool{}
	for _, t := range slices.Compact(slices.Sorted(slices.Values(tables))) {
		if _, ok := cat[t]; !ok {
			continue
		}
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT has_table_privilege($1::text::regclass, 'SELECT')`, quoteTable(t)).Scan(&ok); err != nil {
			return nil, nil, fmt.Errorf("read privileges on %s: %w", t, err)
		}
		denied[t] = !ok
	}
	if o := cfg.Owners; o != nil {
		for _, t := range o.Watch {
			if denied[t] {
				fail("role %s may not SELECT from %s, which owners.query reads: GRANT SELECT ON %s TO %s (or install --run-role %s)",
					user, t, quoteTable(t), pgx.Identifier{user}.Sanitize(), user)
				delete(denied, t)
			}
		}
	}
	for _, t := range cfg.Tables {
		if denied[t.Table] {
			warnings = append(warnings, fmt.Sprintf("%s:%d: role %s may not SELECT from %s: walhook.backfill() cannot read it (GRANT SELECT ON %s TO %s)",
				cfg.File, t.Line, user, t.Table, quoteTable(t.Table), pgx.Identifier{user}.Sanitize()))
		}
	}
	return warnings, errs, nil
}

// suggestSlot proposes a slot name for database db: the slot's name and
// the database's, cut to a valid name.
func suggestSlot(slot, db string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(slot + "_" + db) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

// identityNeed is a table whose replica identity does not send the old
// columns walhook reads from deletes (and updates' previous rows).
type identityNeed struct {
	table    string
	why      string
	line     int
	original string // relreplident: d, n or i
	index    string // the replica identity index, for i
}

func (n identityNeed) warning(file string) string {
	return fmt.Sprintf("%s:%d: %s lacks REPLICA IDENTITY FULL, but %s (walhook install sets it)", file, n.line, n.table, n.why)
}

// identityNeeds lists the tables whose replica identity does not carry the
// old columns walhook reads: the columns the table's rules read through row
// (a delete is judged on the old row), any old.x (an update carries its old
// row only under FULL), its site column (a delete is delivered where the
// row was), its key when that is not the primary key and deletes produce
// events, and owners.remove_on_delete's column. A column of the replica
// identity (the primary key under DEFAULT) is always sent, so reading only
// those needs nothing. A mapped or watched table with no identity at all
// is listed too: once published, PostgreSQL refuses its UPDATEs and
// DELETEs.
func identityNeeds(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config, mapper *mapping.Mapper, rules *acl.Rules, refs []expr.Reference) ([]identityNeed, error) {
	type want struct {
		table string
		cols  []string
		all   bool
		line  int
		why   func(cols []string, all bool) string
		// none: needed when the table has no replica identity at all.
		none bool
	}
	// A published table without a replica identity (NOTHING, or DEFAULT
	// without a primary key) makes PostgreSQL refuse its UPDATEs and
	// DELETEs: adding it to the publication would break the application.
	var wants []want
	published := func(table string, line int) {
		wants = append(wants, want{table: table, line: line, none: true, why: func([]string, bool) string {
			return "it has no replica identity (NOTHING, or DEFAULT without a primary key), and once published PostgreSQL would refuse its UPDATEs and DELETEs"
		}})
	}
	for _, t := range cfg.Tables {
		published(t.Table, t.Line)
	}
	if o := cfg.Owners; o != nil {
		for _, w := range o.Watch {
			published(w, o.Line)
		}
	}
	for _, t := range cfg.Tables {
		cols, all := oldColumns(mapper, rules, t.Table)
		// An update carries its old row only under FULL (DEFAULT sends the
		// key alone, and only when it changed), so reading old.x needs FULL
		// whatever x is; row.x of a delete needs x in the identity.
		var old []string
		for _, r := range refs {
			if r.Table == t.Table && r.Var == "old" && !slices.Contains(old, r.Name) {
				old = append(old, r.Name)
			}
		}
		wants = append(wants, want{table: t.Table, cols: cols, all: all || len(old) > 0, line: t.Line, why: func(missing []string, all bool) string {
			switch {
			case len(old) > 0:
				return "its rules read old." + strings.Join(old, ", old.") + " (updates carry the old row only under FULL)"
			case all:
				return "its rules read the old row as a whole"
			}
			return "its rules read " + strings.Join(missing, ", ") + " of deleted rows"
		}})
		if t.Site != "" {
			wants = append(wants, want{table: t.Table, cols: []string{t.Site}, line: t.Line, why: func([]string, bool) string {
				return "deletes must carry the site column " + t.Site
			}})
		}
		// A key other than the primary key identifies deleted rows only if
		// the identity carries it.
		if len(t.Key) > 0 && mapsDeletes(t) {
			wants = append(wants, want{table: t.Table, cols: t.Key, line: t.Line, why: func(missing []string, _ bool) string {
				return "deletes must carry its key (" + strings.Join(missing, ", ") + ") for receivers to tell which row went"
			}})
		}
	}
	if o := cfg.Owners; o != nil && o.RemoveOnDelete != nil {
		r := o.RemoveOnDelete
		wants = append(wants, want{table: r.Table, cols: []string{r.Column}, line: r.Line, why: func([]string, bool) string {
			return "owners.remove_on_delete reads " + r.Column + " of deleted rows"
		}})
	}
	var out []identityNeed
	seen := map[string]bool{}
	for _, w := range wants {
		if seen[w.table] || (!w.none && !w.all && len(w.cols) == 0) {
			continue
		}
		var ident, index string
		var idCols []string
		err := conn.QueryRow(ctx, `SELECT c.relreplident::text, coalesce(ri.relname::text, ''),
				coalesce((SELECT array_agg(a.attname::text) FROM pg_index i
					JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
					WHERE i.indrelid = c.oid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END), '{}')
			FROM pg_class c
			LEFT JOIN pg_index x ON x.indrelid = c.oid AND x.indisreplident
			LEFT JOIN pg_class ri ON ri.oid = x.indexrelid
			WHERE c.oid = $1::text::regclass`, quoteTable(w.table)).Scan(&ident, &index, &idCols)
		if err != nil {
			return nil, fmt.Errorf("read replica identity of %s: %w", w.table, err)
		}
		if ident == "f" {
			continue
		}
		var missing []string
		for _, c := range w.cols {
			if !slices.Contains(idCols, c) {
				missing = append(missing, c)
			}
		}
		if w.none && len(idCols) > 0 || !w.none && !w.all && len(missing) == 0 {
			continue
		}
		seen[w.table] = true
		out = append(out, identityNeed{table: w.table, why: w.why(missing, w.all), line: w.line, original: ident, index: index})
	}
	return out, nil
}

// mapsDeletes reports whether t produces an event for deletes.
func mapsDeletes(t *mapping.TableConfig) bool {
	verbs := t.Verbs
	if verbs == nil {
		verbs = mapping.DefaultVerbs()
	}
	if verbs["delete"] != "" {
		return true
	}
	return slices.ContainsFunc(t.Events, func(e *mapping.DerivedEvent) bool { return e != nil && e.On == "delete" })
}

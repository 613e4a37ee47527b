package walhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
	"github.com/walhook/walhook/schema"
)

// InstallOptions says where and how to install.
type InstallOptions struct {
	// Slot and Publication default to cdc.DefaultSlot and
	// cdc.DefaultPublication.
	Slot        string
	Publication string
	// AllowHTTP is recorded so that walhook.subscribe() refuses http://
	// targets up front unless the service will send to them.
	AllowHTTP bool
	// RunRole, when set, is granted what `walhook run` needs (it must also
	// have REPLICATION).
	RunRole string
}

// Install brings the database in line with cfg: schema walhook and its
// migrations, the events and dialects the config offers, the publication,
// the replica identity the rules need, and the slot. It is idempotent and
// returns one readable line per change it made; none when all was in place.
func Install(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config, opts InstallOptions) ([]string, error) {
	if opts.Slot == "" {
		opts.Slot = cdc.DefaultSlot
	}
	if opts.Publication == "" {
		opts.Publication = cdc.DefaultPublication
	}
	mapper, err := mapping.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := CheckCatalog(ctx, conn, cfg); err != nil {
		return nil, err
	}
	changes, err := install(ctx, conn, opts, cfg, mapper)
	if err != nil {
		return nil, err
	}
	if opts.RunRole != "" {
		gc, err := grantRunRole(ctx, conn, opts.RunRole, cfg)
		if err != nil {
			return nil, err
		}
		changes = append(changes, gc...)
	}
	return changes, nil
}

// install brings the database in line with the config: schema, events,
// dialects, settings, static subscriptions, publication and slot. It returns
// what it changed.
func install(ctx context.Context, conn *pgx.Conn, c InstallOptions, cfg *mapping.Config, mapper *mapping.Mapper) ([]string, error) {
	var events []schema.Event
	for _, e := range mapper.Events() {
		events = append(events, schema.Event{Name: e.Name, Table: e.Table, Operation: e.Op, Derived: e.Derived})
	}
	rep, err := schema.Install(ctx, conn, schema.Options{
		Events:   events,
		Dialects: slices.Sorted(maps.Keys(cfg.Dialects)),
		Settings: map[string]string{"allow_http": strconv.FormatBool(c.AllowHTTP), "config_digest": configDigest(cfg, mapper)},
	})
	if err != nil {
		return nil, fmt.Errorf("install schema: %w", err)
	}
	changes := rep.Changes
	sc, err := schema.Reconcile(ctx, conn, cfg.Subscriptions)
	if err != nil {
		return nil, fmt.Errorf("reconcile static subscriptions: %w", err)
	}
	changes = append(changes, sc...)
	tables := append(mapper.Tables(), cdc.SubscriptionsTable)
	if cfg.Owners != nil {
		tables = append(tables, cfg.Owners.Watch...)
	}
	tables = slices.Compact(slices.Sorted(slices.Values(tables)))
	// Before publishing: a published table without a replica identity fails
	// the application's UPDATE and DELETE.
	tc, err := ensureTableIdentity(ctx, conn, cfg)
	if err != nil {
		return nil, err
	}
	changes = append(changes, tc...)
	pc, err := cdc.EnsurePublication(ctx, conn, c.Publication, tables)
	if err != nil {
		return nil, err
	}
	changes = append(changes, pc...)
	ic, err := ensureIdentity(ctx, conn, cfg)
	if err != nil {
		return nil, err
	}
	changes = append(changes, ic...)
	created, lsn, err := cdc.EnsureSlot(ctx, conn, c.Slot)
	if err != nil {
		return nil, err
	}
	if created {
		changes = append(changes, fmt.Sprintf("created replication slot %s at %s", c.Slot, lsn))
		n, err := subs.Snapshot(ctx, conn, lsn)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			changes = append(changes, fmt.Sprintf("recorded %d existing subscription(s) for the new slot", n))
		}
	}
	if len(changes) > 0 {
		// A running process learns of the install from the stream, in
		// commit order, and reloads or stops (see Config.Reload).
		if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, cdc.InstallPrefix, configDigest(cfg, mapper)); err != nil {
			return nil, fmt.Errorf("announce the install: %w", err)
		}
	}
	return changes, nil
}

// configDigest sums what an install puts in the database from a config:
// events, tables, owners, dialects and static subscriptions. Two configs
// with the same digest need no reinstall between them.
func configDigest(cfg *mapping.Config, mapper *mapping.Mapper) string {
	h := sha256.New()
	for _, e := range mapper.Events() {
		fmt.Fprintf(h, "event %s %s %s %v\n", e.Name, e.Table, e.Op, e.Derived)
	}
	if o := cfg.Owners; o != nil {
		fmt.Fprintf(h, "owners %q %q\n", o.Query, o.Watch)
	}
	for _, d := range slices.Sorted(maps.Keys(cfg.Dialects)) {
		fmt.Fprintf(h, "dialect %s\n", d)
	}
	for _, st := range cfg.Subscriptions {
		fmt.Fprintf(h, "static %+v\n", *st)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ensureIdentity sets REPLICA IDENTITY FULL on the tables whose deletes and
// updates cannot be judged or placed from the key alone: those whose rules
// read the old row, and those with a site column (a delete must be delivered
// at the site the row was at).
func ensureIdentity(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) ([]string, error) {
	var changes []string
	for _, t := range cfg.Tables {
		why, err := identityNeeded(ctx, conn, cfg, t)
		if err != nil {
			return nil, err
		}
		if why == "" {
			continue
		}
		if _, err := conn.Exec(ctx, "ALTER TABLE "+quoteTable(t.Table)+" REPLICA IDENTITY FULL"); err != nil {
			return nil, fmt.Errorf("set replica identity of %s: %w", t.Table, err)
		}
		changes = append(changes, fmt.Sprintf("set REPLICA IDENTITY FULL on %s: %s", t.Table, why))
	}
	return changes, nil
}

// identityNeeded says why t needs REPLICA IDENTITY FULL and lacks it, or ""
// when it has it or does not need it.
func identityNeeded(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config, t *mapping.TableConfig) (string, error) {
	rules, err := acl.Compile(cfg)
	if err != nil {
		return "", err
	}
	why := ""
	switch {
	case rules.NeedsFullIdentity(t.Table):
		why = "its rules read the row of updates and deletes"
	case t.Site != "":
		why = "deletes must carry the site column " + t.Site
	default:
		return "", nil
	}
	var ident string
	err = conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = $1::text::regclass`, quoteTable(t.Table)).Scan(&ident)
	if err != nil {
		return "", fmt.Errorf("read replica identity of %s: %w", t.Table, err)
	}
	if ident == "f" {
		return "", nil
	}
	return why, nil
}

func quoteTable(name string) string {
	s, t, _ := strings.Cut(name, ".")
	return pgx.Identifier{s, t}.Sanitize()
}

// grantRunRole gives role what walhook run needs beyond REPLICATION: the
// walhook tables, a row-level security policy that lets it see every
// subscription, and SELECT on the tables owners.query reads (the watched
// ones; a query reading others needs those granted by hand).
func grantRunRole(ctx context.Context, conn *pgx.Conn, role string, cfg *mapping.Config) ([]string, error) {
	var repl bool
	err := conn.QueryRow(ctx, `SELECT rolreplication FROM pg_roles WHERE rolname = $1`, role).Scan(&repl)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("--run-role: role %q does not exist", role)
	}
	if err != nil {
		return nil, fmt.Errorf("read role %q: %w", role, err)
	}
	r := pgx.Identifier{role}.Sanitize()
	stmts := []string{
		"GRANT USAGE ON SCHEMA walhook TO " + r,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO " + r,
		"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA walhook TO " + r,
		// run reconciles the static subscriptions at start.
		"GRANT EXECUTE ON FUNCTION walhook._declare_static(text, text[], text, text, text, text, text) TO " + r,
	}
	for _, t := range []string{"subscriptions", "attempts"} {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'walhook'
			AND tablename = $1 AND policyname = $2)`, t, "service_"+role).Scan(&exists); err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		if !exists {
			stmts = append(stmts, fmt.Sprintf("CREATE POLICY %s ON walhook.%s TO %s USING (true) WITH CHECK (true)",
				pgx.Identifier{"service_" + role}.Sanitize(), t, r))
		}
	}
	if cfg.Owners != nil {
		for _, t := range cfg.Owners.Watch {
			s, n, _ := strings.Cut(t, ".")
			stmts = append(stmts, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", pgx.Identifier{s}.Sanitize(), r),
				fmt.Sprintf("GRANT SELECT ON %s TO %s", pgx.Identifier{s, n}.Sanitize(), r))
		}
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	out := []string{fmt.Sprintf("granted role %s what walhook run needs", role)}
	if !repl {
		out = append(out, fmt.Sprintf("warning: role %s lacks REPLICATION; run ALTER ROLE %s REPLICATION as a superuser", role, r))
	}
	return out, nil
}

// installMismatch is checkInstalled's verdict that the database does not
// match the config, as opposed to a failure to ask.
type installMismatch string

func (e installMismatch) Error() string { return string(e) }

// checkInstalled refuses to run with a config the database was not installed
// for: a mapped table missing from the publication would produce nothing,
// silently, and an event missing from walhook.events cannot be subscribed to.
//
// A mapped table that no longer exists (dropped, or renamed while walhook was
// stopped) is not refused: the other tables go on. It is returned as a
// warning, for the caller to log loudly.
func checkInstalled(ctx context.Context, dsn, publication string, mapper *mapping.Mapper) (warnings []string, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	v, err := schema.Version(ctx, conn)
	if err != nil {
		return nil, err
	}
	if v == 0 {
		return nil, installMismatch("walhook is not installed in this database: run walhook install with this config")
	}
	migs, err := schema.Migrations()
	if err != nil {
		return nil, err
	}
	if latest := migs[len(migs)-1].Version; v < latest {
		return nil, installMismatch(fmt.Sprintf("the installed schema is version %d and this walhook needs %d: run walhook install to upgrade it", v, latest))
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", publication, err)
	}
	var missing []string
	for _, t := range mapper.Tables() {
		if slices.Contains(published, t) {
			continue
		}
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, quoteTable(t)).Scan(&exists); err != nil {
			return nil, fmt.Errorf("look up %s: %w", t, err)
		}
		if !exists {
			warnings = append(warnings, fmt.Sprintf("mapped table %s does not exist (dropped, or renamed while walhook was stopped): "+
				"it produces no events until the config names the table as it is now", t))
			continue
		}
		missing = append(missing, t)
	}
	rows, err = conn.Query(ctx, `SELECT name FROM walhook.events`)
	if err != nil {
		return nil, fmt.Errorf("read walhook.events: %w", err)
	}
	events, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read walhook.events: %w", err)
	}
	for _, e := range mapper.Events() {
		if !slices.Contains(events, e.Name) {
			missing = append(missing, "event "+e.Name)
		}
	}
	drift, err := identityDrift(ctx, conn, mappedConfigs(mapper))
	if err != nil {
		return nil, err
	}
	missing = append(missing, drift...)
	if len(missing) > 0 {
		return nil, installMismatch(fmt.Sprintf("the config is newer than the installation (not installed: %s): run walhook install with this config first",
			strings.Join(missing, ", ")))
	}
	return warnings, nil
}

// CheckCatalog checks the config's tables and columns against the database.
func CheckCatalog(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) error {
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
		return fmt.Errorf("read catalog: %w", err)
	}
	cat := mapping.Catalog{}
	var table string
	var col mapping.CatalogColumn
	_, err = pgx.ForEachRow(rows, []any{&table, &col.Name, &col.Type, &col.NotNull, &col.PrimaryKey}, func() error {
		cat[table] = append(cat[table], col)
		return nil
	})
	if err != nil {
		return fmt.Errorf("read catalog: %w", err)
	}
	if err := cfg.CheckCatalog(cat); err != nil {
		return err
	}
	return checkPartitionMapping(ctx, conn, cfg)
}

// IdentityWarnings lists the mapped tables that lack the REPLICA IDENTITY
// FULL their rules or site need, each with why; Install sets it.
func IdentityWarnings(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) ([]string, error) {
	var out []string
	for _, t := range cfg.Tables {
		why, err := identityNeeded(ctx, conn, cfg, t)
		if err != nil {
			return nil, err
		}
		if why != "" {
			out = append(out, fmt.Sprintf("%s:%d: %s lacks REPLICA IDENTITY FULL, but %s (walhook install sets it)", cfg.File, t.Line, t.Table, why))
		}
	}
	drift, err := identityDrift(ctx, conn, cfg.Tables)
	if err != nil {
		return nil, err
	}
	for _, d := range drift {
		out = append(out, fmt.Sprintf("%s: %s is not set (walhook install sets it)", cfg.File, d))
	}
	return out, nil
}

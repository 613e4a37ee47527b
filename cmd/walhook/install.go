package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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

func cmdInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("install", stderr, &c, "database-url", "config", "slot", "publication", "allow-http", "log-format")
	runRole := fs.String("run-role", "", "grant this role what walhook run needs (it must also have REPLICATION)")
	recreateSlot := fs.Bool("recreate-slot", false, "drop the replication slot, even one PostgreSQL invalidated, and create it anew "+
		"at the current position; changes committed in between are not streamed, so backfill them")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	cfg, mapper, err := loadConfig(c.Config)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := checkCatalog(ctx, conn, cfg); err != nil {
		return err
	}
	var changes []string
	if *recreateSlot {
		// Before install, whose EnsureSlot refuses a lost slot; the snapshot
		// that a new slot needs follows once the schema is in place.
		line, _, lsn, err := cdc.RecreateSlot(ctx, conn, c.Slot)
		if err != nil {
			return err
		}
		changes = append(changes, line)
		ic, err := install(ctx, conn, c, cfg, mapper)
		if err != nil {
			return err
		}
		changes = append(changes, ic...)
		if n, err := subs.Snapshot(ctx, conn, lsn); err != nil {
			return err
		} else if n > 0 {
			changes = append(changes, fmt.Sprintf("recorded %d existing subscription(s) for the new slot", n))
		}
	} else {
		ic, err := install(ctx, conn, c, cfg, mapper)
		if err != nil {
			return err
		}
		changes = append(changes, ic...)
	}
	if *runRole != "" {
		gc, err := grantRunRole(ctx, conn, *runRole, cfg)
		if err != nil {
			return err
		}
		changes = append(changes, gc...)
	}
	if len(changes) == 0 {
		fmt.Fprintln(stdout, "walhook is installed and up to date; nothing changed")
		return nil
	}
	for _, ch := range changes {
		fmt.Fprintln(stdout, ch)
	}
	return nil
}

// install brings the database in line with the config: schema, events,
// dialects, settings, publication and slot. It returns what it changed.
func install(ctx context.Context, conn *pgx.Conn, c common, cfg *mapping.Config, mapper *mapping.Mapper) ([]string, error) {
	var events []schema.Event
	for _, e := range mapper.Events() {
		events = append(events, schema.Event{Name: e.Name, Table: e.Table, Operation: e.Op, Derived: e.Derived})
	}
	rep, err := schema.Install(ctx, conn, schema.Options{
		Events:   events,
		Dialects: slices.Sorted(maps.Keys(cfg.Dialects)),
		Settings: map[string]string{"allow_http": strconv.FormatBool(c.AllowHTTP)},
	})
	if err != nil {
		return nil, fmt.Errorf("install schema: %w", err)
	}
	changes := rep.Changes
	tables := append(mapper.Tables(), cdc.SubscriptionsTable)
	if cfg.Owners != nil {
		tables = append(tables, cfg.Owners.Watch...)
	}
	tables = slices.Compact(slices.Sorted(slices.Values(tables)))
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
	if created != "" {
		changes = append(changes, created)
		n, err := subs.Snapshot(ctx, conn, lsn)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			changes = append(changes, fmt.Sprintf("recorded %d existing subscription(s) for the new slot", n))
		}
	}
	return changes, nil
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

// loadConfig loads the config and compiles its mapping and rules.
func loadConfig(path string) (*mapping.Config, *mapping.Mapper, error) {
	cfg, m, _, err := loadConfigRules(path)
	return cfg, m, err
}

func loadConfigRules(path string) (*mapping.Config, *mapping.Mapper, *acl.Rules, error) {
	cfg, err := mapping.Load(path)
	if err != nil {
		return nil, nil, nil, err
	}
	m, err := mapping.New(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	rules, err := acl.Compile(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	return cfg, m, rules, nil
}

// installMismatch is checkInstalled's verdict that the database does not
// match the config, as opposed to a failure to ask.
type installMismatch string

func (e installMismatch) Error() string { return string(e) }

// checkInstalled refuses to run with a config the database was not installed
// for: a mapped table missing from the publication would produce nothing,
// silently, and an event missing from walhook.events cannot be subscribed to.
func checkInstalled(ctx context.Context, dsn, publication string, mapper *mapping.Mapper) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	v, err := schema.Version(ctx, conn)
	if err != nil {
		return err
	}
	if v == 0 {
		return installMismatch("walhook is not installed in this database: run walhook install with this config")
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return fmt.Errorf("read publication %q: %w", publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read publication %q: %w", publication, err)
	}
	var missing []string
	for _, t := range mapper.Tables() {
		if !slices.Contains(published, t) {
			missing = append(missing, t)
		}
	}
	rows, err = conn.Query(ctx, `SELECT name FROM walhook.events`)
	if err != nil {
		return fmt.Errorf("read walhook.events: %w", err)
	}
	events, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read walhook.events: %w", err)
	}
	for _, e := range mapper.Events() {
		if !slices.Contains(events, e.Name) {
			missing = append(missing, "event "+e.Name)
		}
	}
	if len(missing) > 0 {
		return installMismatch(fmt.Sprintf("the config is newer than the installation (not installed: %s): run walhook install with this config first",
			strings.Join(missing, ", ")))
	}
	return nil
}

// checkCatalog checks the config's tables and columns against the database.
func checkCatalog(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) error {
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
	return cfg.CheckCatalog(cat)
}

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("check", stderr, &c, "database-url", "config")
	if err := fs.parse(args, false); err != nil {
		return err
	}
	cfg, mapper, err := loadConfig(c.Config)
	if err != nil {
		return err
	}
	if c.DatabaseURL != "" {
		conn, err := pgx.Connect(ctx, c.DatabaseURL)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if err := checkCatalog(ctx, conn, cfg); err != nil {
			return err
		}
		for _, t := range cfg.Tables {
			why, err := identityNeeded(ctx, conn, cfg, t)
			if err != nil {
				return err
			}
			if why != "" {
				fmt.Fprintf(stdout, "warning: %s:%d: %s lacks REPLICA IDENTITY FULL, but %s (walhook install sets it)\n", cfg.File, t.Line, t.Table, why)
			}
		}
	}
	fmt.Fprintf(stdout, "%s: ok: %d table(s), %d event(s)\n", cfg.File, len(cfg.Tables), len(mapper.Events()))
	for _, e := range mapper.Events() {
		fmt.Fprintf(stdout, "  %-28s %s %s\n", e.Name, e.Table, e.Op)
	}
	return nil
}

func cmdUninstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("uninstall", stderr, &c, "database-url", "slot", "publication")
	dropSchema := fs.Bool("drop-schema", false, "also drop schema walhook with every subscription and attempt")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	dropped, err := cdc.DropSlot(ctx, conn, c.Slot)
	if err != nil {
		return err
	}
	if dropped {
		fmt.Fprintf(stdout, "dropped replication slot %s\n", c.Slot)
	}
	if err := cdc.DropPublication(ctx, conn, c.Publication); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dropped publication %s\n", c.Publication)
	if *dropSchema {
		if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS walhook CASCADE`); err != nil {
			return fmt.Errorf("drop schema walhook: %w", err)
		}
		fmt.Fprintln(stdout, "dropped schema walhook")
	}
	return nil
}

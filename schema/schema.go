package schema

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// lockKey is the advisory lock that serialises installs: "walhook" as bytes.
const lockKey int64 = 0x77616c686f6f6b

// Migration is one embedded schema version.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		if !ok {
			return nil, fmt.Errorf("migration %q: want NNNN_name.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("migration %q: version: %w", name, err)
		}
		body, err := migrationFS.ReadFile("migrations/" + name)
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", name, err)
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Event is one event the installed config can produce.
type Event struct {
	Name      string
	Table     string
	Operation string // insert|update|delete, or "" for none
	Derived   bool
}

// Options says what to install besides the migrations.
type Options struct {
	Events   []Event
	Dialects []string
	// Settings are recorded in walhook.settings, e.g. allow_http, so that the
	// SQL API can refuse up front what the service would refuse later.
	Settings map[string]string
}

// Report lists what an install changed, one readable line each.
type Report struct {
	Changes []string
}

// Install applies pending migrations and synchronises events, dialects and
// settings, all in one transaction under the install lock.
func Install(ctx context.Context, conn Beginner, opts Options) (*Report, error) {
	return install(ctx, conn, opts, 0)
}

// install is Install applying migrations up to version upTo only (0 for
// all), so that tests can upgrade an installation with data in it.
func install(ctx context.Context, conn Beginner, opts Options, upTo int) (*Report, error) {
	migs, err := Migrations()
	if err != nil {
		return nil, err
	}
	if upTo > 0 {
		migs = slices.DeleteFunc(migs, func(m Migration) bool { return m.Version > upTo })
	}
	rep := &Report{}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey); err != nil {
			return fmt.Errorf("take install lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS walhook`); err != nil {
			return fmt.Errorf("create schema walhook: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS walhook.schema_migrations (
			version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return fmt.Errorf("create walhook.schema_migrations: %w", err)
		}
		applied := map[int]bool{}
		rows, err := tx.Query(ctx, `SELECT version FROM walhook.schema_migrations`)
		if err != nil {
			return fmt.Errorf("read applied migrations: %w", err)
		}
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			return fmt.Errorf("read applied migrations: %w", err)
		}
		for _, v := range vs {
			applied[v] = true
		}
		for _, m := range migs {
			if applied[m.Version] {
				continue
			}
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return fmt.Errorf("apply migration %s: %w", m.Name, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO walhook.schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
				return fmt.Errorf("record migration %s: %w", m.Name, err)
			}
			rep.Changes = append(rep.Changes, "applied migration "+m.Name)
		}
		if err := syncEvents(ctx, tx, opts.Events, rep); err != nil {
			return err
		}
		if err := syncDialects(ctx, tx, opts.Dialects, rep); err != nil {
			return err
		}
		return syncSettings(ctx, tx, opts.Settings, rep)
	})
	if err != nil {
		return nil, err
	}
	return rep, nil
}

func syncEvents(ctx context.Context, tx pgx.Tx, events []Event, rep *Report) error {
	rows, err := tx.Query(ctx, `SELECT name, table_name, coalesce(operation, ''), derived FROM walhook.events`)
	if err != nil {
		return fmt.Errorf("read walhook.events: %w", err)
	}
	have := map[string]Event{}
	var e Event
	_, err = pgx.ForEachRow(rows, []any{&e.Name, &e.Table, &e.Operation, &e.Derived}, func() error {
		have[e.Name] = e
		return nil
	})
	if err != nil {
		return fmt.Errorf("read walhook.events: %w", err)
	}
	want := map[string]bool{}
	for _, e := range events {
		want[e.Name] = true
		if old, ok := have[e.Name]; ok && old == e {
			continue
		}
		_, err := tx.Exec(ctx, `INSERT INTO walhook.events (name, table_name, operation, derived)
			VALUES ($1, $2, nullif($3, ''), $4)
			ON CONFLICT (name) DO UPDATE SET table_name = excluded.table_name,
				operation = excluded.operation, derived = excluded.derived`,
			e.Name, e.Table, e.Operation, e.Derived)
		if err != nil {
			return fmt.Errorf("record event %s: %w", e.Name, err)
		}
		rep.Changes = append(rep.Changes, "event "+e.Name+" ("+e.Table+")")
	}
	var gone []string
	for name := range have {
		if !want[name] {
			gone = append(gone, name)
		}
	}
	slices.Sort(gone)
	for _, name := range gone {
		if _, err := tx.Exec(ctx, `DELETE FROM walhook.events WHERE name = $1`, name); err != nil {
			return fmt.Errorf("remove event %s: %w", name, err)
		}
		rep.Changes = append(rep.Changes, "removed event "+name+" (existing subscriptions to it receive nothing)")
	}
	return nil
}

func syncDialects(ctx context.Context, tx pgx.Tx, dialects []string, rep *Report) error {
	if !slices.Contains(dialects, "default") {
		dialects = append([]string{"default"}, dialects...)
	}
	tag, err := tx.Exec(ctx, `INSERT INTO walhook.dialects (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, dialects)
	if err != nil {
		return fmt.Errorf("record dialects: %w", err)
	}
	if tag.RowsAffected() > 0 {
		rep.Changes = append(rep.Changes, fmt.Sprintf("recorded %d dialect(s)", tag.RowsAffected()))
	}
	tag, err = tx.Exec(ctx, `DELETE FROM walhook.dialects WHERE name <> ALL($1::text[])`, dialects)
	if err != nil {
		return fmt.Errorf("remove dialects: %w", err)
	}
	if tag.RowsAffected() > 0 {
		rep.Changes = append(rep.Changes, fmt.Sprintf("removed %d dialect(s)", tag.RowsAffected()))
	}
	return nil
}

func syncSettings(ctx context.Context, tx pgx.Tx, settings map[string]string, rep *Report) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		tag, err := tx.Exec(ctx, `INSERT INTO walhook.settings (key, value) VALUES ($1, $2)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE walhook.settings.value IS DISTINCT FROM excluded.value`,
			k, settings[k])
		if err != nil {
			return fmt.Errorf("record setting %s: %w", k, err)
		}
		if tag.RowsAffected() > 0 {
			line := fmt.Sprintf("setting %s = %s", k, settings[k])
			if k == "config_digest" {
				// A hash says nothing to a reader; what it is for does.
				line = "recorded this config's digest: a running walhook follows the change"
			}
			rep.Changes = append(rep.Changes, line)
		}
	}
	return nil
}

// Version returns the highest applied migration, or 0 when walhook is not
// installed.
func Version(ctx context.Context, conn *pgx.Conn) (int, error) {
	var v int
	err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM walhook.schema_migrations`).Scan(&v)
	if err != nil {
		var exists bool
		if err2 := conn.QueryRow(ctx, `SELECT to_regclass('walhook.schema_migrations') IS NOT NULL`).Scan(&exists); err2 == nil && !exists {
			return 0, nil
		}
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

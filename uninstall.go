package walhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
)

// UninstallOptions says what to remove.
type UninstallOptions struct {
	// Slot and Publication default to cdc.DefaultSlot and
	// cdc.DefaultPublication.
	Slot        string
	Publication string
	// DropSchema also drops schema walhook, with every subscription and
	// attempt.
	DropSchema bool
}

// Uninstall undoes Install: it drops the slot and the publication, puts
// back the replica identity Install changed on the user's tables (as
// recorded in walhook.settings; a table whose identity is no longer FULL is
// left as it is), and with DropSchema drops schema walhook. It returns one
// line per change.
func Uninstall(ctx context.Context, conn *pgx.Conn, opts UninstallOptions) ([]string, error) {
	if opts.Slot == "" {
		opts.Slot = cdc.DefaultSlot
	}
	if opts.Publication == "" {
		opts.Publication = cdc.DefaultPublication
	}
	var changes []string
	dropped, err := cdc.DropSlot(ctx, conn, opts.Slot)
	if err != nil {
		return nil, err
	}
	if dropped {
		changes = append(changes, "dropped replication slot "+opts.Slot)
	}
	if err := cdc.DropPublication(ctx, conn, opts.Publication); err != nil {
		return nil, err
	}
	changes = append(changes, "dropped publication "+opts.Publication)
	rc, err := restoreIdentity(ctx, conn)
	if err != nil {
		return nil, err
	}
	changes = append(changes, rc...)
	line, err := DropPartitionTrigger(ctx, conn)
	if err != nil {
		return nil, err
	}
	if line != "" {
		changes = append(changes, line)
	}
	if opts.DropSchema {
		if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS walhook CASCADE`); err != nil {
			return nil, fmt.Errorf("drop schema walhook: %w", err)
		}
		changes = append(changes, "dropped schema walhook")
	}
	return changes, nil
}

// restoreIdentity puts back the replica identities install recorded, and
// forgets them.
func restoreIdentity(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('walhook.settings') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for walhook.settings: %w", err)
	}
	if !exists {
		return nil, nil
	}
	rows, err := conn.Query(ctx, `SELECT substr(key, length($1) + 1), value FROM walhook.settings WHERE starts_with(key, $1) ORDER BY key`, identitySetting)
	if err != nil {
		return nil, fmt.Errorf("read recorded replica identities: %w", err)
	}
	type rec struct {
		table string
		recordedIdentity
	}
	var recs []rec
	var table, value string
	if _, err := pgx.ForEachRow(rows, []any{&table, &value}, func() error {
		r := rec{table: table}
		if err := json.Unmarshal([]byte(value), &r.recordedIdentity); err != nil {
			return fmt.Errorf("recorded replica identity of %s: %w", table, err)
		}
		recs = append(recs, r)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read recorded replica identities: %w", err)
	}
	var changes []string
	for _, r := range recs {
		var ident string
		err := conn.QueryRow(ctx, `SELECT relreplident::text FROM pg_class WHERE oid = to_regclass($1)`, quoteTable(r.table)).Scan(&ident)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			changes = append(changes, fmt.Sprintf("%s no longer exists; nothing to restore", r.table))
		case err != nil:
			return nil, fmt.Errorf("read replica identity of %s: %w", r.table, err)
		case ident != "f":
			changes = append(changes, fmt.Sprintf("left REPLICA IDENTITY of %s as it is (%s): it was changed after walhook install set FULL", r.table, identityNames[ident]))
		default:
			to := "DEFAULT"
			switch r.Original {
			case "nothing":
				to = "NOTHING"
			case "index":
				to = "USING INDEX " + pgx.Identifier{r.Index}.Sanitize()
			}
			if _, err := conn.Exec(ctx, "ALTER TABLE "+quoteTable(r.table)+" REPLICA IDENTITY "+to); err != nil {
				return nil, fmt.Errorf("restore replica identity of %s: %w", r.table, err)
			}
			changes = append(changes, fmt.Sprintf("restored REPLICA IDENTITY %s on %s (walhook install had set FULL)", to, r.table))
		}
		if _, err := conn.Exec(ctx, `DELETE FROM walhook.settings WHERE key = $1`, identitySetting+r.table); err != nil {
			return nil, fmt.Errorf("forget replica identity of %s: %w", r.table, err)
		}
	}
	return changes, nil
}

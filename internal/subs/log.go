package subs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Entry is one subscription change as the stream applied it.
type Entry struct {
	ID      string
	Deleted bool
	Sub     *Subscription // nil when Deleted
}

// Load builds the index as it stood at lsn: for each subscription, the newest
// log entry at or before lsn. It also prunes entries no start can need again:
// those superseded at or before lsn.
func Load(ctx context.Context, db *pgxpool.Pool, lsn pglogrepl.LSN) (*Index, error) {
	ix := New()
	rows, err := db.Query(ctx, `
		SELECT DISTINCT ON (id) id::text, deleted, coalesce(owner, ''),
			coalesce(events, CASE WHEN event IS NULL THEN '{}'::text[] ELSE ARRAY[event] END), coalesce(target_url, ''),
			coalesce(site, '/'), coalesce(dialect, 'default'), coalesce(secret, ''), coalesce(active, false),
			coalesce(previous_secret, ''), coalesce(previous_secret_until, '-infinity')
		FROM walhook.subscription_log WHERE lsn <= $1::text::pg_lsn
		ORDER BY id, lsn DESC`, lsn.String())
	if err != nil {
		return nil, fmt.Errorf("load subscriptions as of %s: %w", lsn, err)
	}
	var deleted bool
	var s Subscription
	var until pgtype.Timestamptz
	_, err = pgx.ForEachRow(rows, []any{&s.ID, &deleted, &s.Owner, &s.Events, &s.TargetURL, &s.Site, &s.Dialect, &s.Secret, &s.Active, &s.PrevSecret, &until}, func() error {
		s.PrevSecretUntil = time.Time{}
		if until.InfinityModifier == pgtype.Finite {
			s.PrevSecretUntil = until.Time
		}
		if !deleted {
			c := s
			ix.Put(&c)
		}
		s.Events = nil // scanned afresh into a new slice for the next row
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load subscriptions as of %s: %w", lsn, err)
	}
	if err := Prune(ctx, db, lsn); err != nil {
		return nil, err
	}
	return ix, nil
}

// Prune deletes the log entries no start can need again: those superseded
// at or before lsn, which must be at or before the slot's confirmed LSN (a
// start never loads as of an earlier point).
func Prune(ctx context.Context, db *pgxpool.Pool, lsn pglogrepl.LSN) error {
	_, err := db.Exec(ctx, `
		DELETE FROM walhook.subscription_log l USING (
			SELECT id, max(lsn) AS lsn FROM walhook.subscription_log WHERE lsn <= $1::text::pg_lsn GROUP BY id) k
		WHERE l.id = k.id AND (l.lsn < k.lsn OR (l.lsn = k.lsn AND l.deleted))`, lsn.String())
	if err != nil {
		return fmt.Errorf("prune subscription log: %w", err)
	}
	return nil
}

// WriteLog records the entries of one transaction at its end LSN. Writing the
// same entries again (a replay) changes nothing.
func WriteLog(ctx context.Context, db *pgxpool.Pool, lsn pglogrepl.LSN, entries []Entry) error {
	b := &pgx.Batch{}
	for _, e := range entries {
		if e.Deleted {
			b.Queue(`INSERT INTO walhook.subscription_log (id, lsn, deleted) VALUES ($1, $2::text::pg_lsn, true)
				ON CONFLICT (id, lsn) DO UPDATE SET deleted = true, owner = NULL, event = NULL, events = NULL, target_url = NULL,
					site = NULL, dialect = NULL, secret = NULL, active = NULL, previous_secret = NULL, previous_secret_until = NULL`, e.ID, lsn.String())
			continue
		}
		s := e.Sub
		var until any
		if !s.PrevSecretUntil.IsZero() {
			until = s.PrevSecretUntil
		}
		b.Queue(`INSERT INTO walhook.subscription_log (id, lsn, deleted, owner, events, event, target_url, site, dialect, secret, active,
				previous_secret, previous_secret_until)
			VALUES ($1, $2::text::pg_lsn, false, $3, $4::text[], ($4::text[])[1], $5, $6, $7, nullif($8, ''), $9, nullif($10, ''), $11)
			ON CONFLICT (id, lsn) DO UPDATE SET deleted = false, owner = excluded.owner, events = excluded.events, event = excluded.event,
				target_url = excluded.target_url, site = excluded.site, dialect = excluded.dialect,
				secret = excluded.secret, active = excluded.active, previous_secret = excluded.previous_secret,
				previous_secret_until = excluded.previous_secret_until`,
			s.ID, lsn.String(), s.Owner, s.Events, s.TargetURL, s.Site, s.Dialect, s.Secret, s.Active, s.PrevSecret, until)
	}
	if err := db.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write subscription log at %s: %w", lsn, err)
	}
	return nil
}

// Snapshot records every current subscription at lsn. Install calls it when it
// creates a slot, since the new slot will never replay how they came to be.
func Snapshot(ctx context.Context, conn *pgx.Conn, lsn pglogrepl.LSN) (int64, error) {
	tag, err := conn.Exec(ctx, `
		INSERT INTO walhook.subscription_log (id, lsn, deleted, owner, event, events, target_url, site, dialect, secret, active,
			previous_secret, previous_secret_until)
		SELECT id, $1::text::pg_lsn, false, owner, event, events, target_url, site, dialect, secret, active,
			previous_secret, previous_secret_until FROM walhook.subscriptions
		ON CONFLICT (id, lsn) DO NOTHING`, lsn.String())
	if err != nil {
		return 0, fmt.Errorf("snapshot subscriptions at %s: %w", lsn, err)
	}
	return tag.RowsAffected(), nil
}

// Rebuild makes the log say, at lsn (the slot's confirmed LSN), that the
// subscriptions are what the table holds now: for when changes to
// walhook.subscriptions did not reach the stream (the table was out of the
// publication), so the log missed them. Load(lsn) then gives the table's
// state. It returns how many subscriptions it recorded and the WAL position
// the table was read at: the stream replays subscription changes that
// committed before it, which the table already holds, and a replay would
// bring back what was removed in the gap, so the caller skips them
// (RebuiltAt keeps the position across restarts).
func Rebuild(ctx context.Context, db *pgxpool.Pool, lsn pglogrepl.LSN) (int64, pglogrepl.LSN, error) {
	var n int64
	var at pglogrepl.LSN
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		// The position first: whatever commits after it is both in the
		// table read below and replayed, which is harmless. The insert
		// position, not pg_current_wal_lsn(), which may lag behind commits
		// already made (synchronous_commit = off).
		var pos string
		if err := tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&pos); err != nil {
			return fmt.Errorf("rebuild subscription log: %w", err)
		}
		var err error
		if at, err = pglogrepl.ParseLSN(pos); err != nil {
			return fmt.Errorf("rebuild subscription log: %w", err)
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO walhook.subscription_log (id, lsn, deleted, owner, event, events, target_url, site, dialect, secret, active,
				previous_secret, previous_secret_until)
			SELECT id, $1::text::pg_lsn, false, owner, event, events, target_url, site, dialect, secret, active,
				previous_secret, previous_secret_until FROM walhook.subscriptions
			ON CONFLICT (id, lsn) DO UPDATE SET deleted = false, owner = excluded.owner, event = excluded.event,
				events = excluded.events, target_url = excluded.target_url, site = excluded.site, dialect = excluded.dialect,
				secret = excluded.secret, active = excluded.active, previous_secret = excluded.previous_secret,
				previous_secret_until = excluded.previous_secret_until`, lsn.String())
		if err != nil {
			return fmt.Errorf("rebuild subscription log at %s: %w", lsn, err)
		}
		n = tag.RowsAffected()
		// Those the log still has and the table does not were removed in the
		// gap.
		if _, err := tx.Exec(ctx, `
			INSERT INTO walhook.subscription_log (id, lsn, deleted)
			SELECT DISTINCT l.id, $1::text::pg_lsn, true FROM walhook.subscription_log l
			WHERE NOT EXISTS (SELECT 1 FROM walhook.subscriptions s WHERE s.id = l.id)
			ON CONFLICT (id, lsn) DO UPDATE SET deleted = true`, lsn.String()); err != nil {
			return fmt.Errorf("rebuild subscription log at %s: %w", lsn, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO walhook.settings (key, value) VALUES ('subscriptions_rebuilt_at', $1)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, at.String()); err != nil {
			return fmt.Errorf("record the rebuild of the subscription log: %w", err)
		}
		return nil
	})
	return n, at, err
}

// RebuiltAt returns the WAL position of the last Rebuild, 0 for none.
func RebuiltAt(ctx context.Context, db *pgxpool.Pool) (pglogrepl.LSN, error) {
	var v string
	err := db.QueryRow(ctx, `SELECT value FROM walhook.settings WHERE key = 'subscriptions_rebuilt_at'`).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read when the subscription log was rebuilt: %w", err)
	}
	return pglogrepl.ParseLSN(v)
}

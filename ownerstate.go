package walhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/expr"
)

// Owners as of each commit: with an owners block, install's triggers write
// each subscribed owner's attributes to walhook.owner_state in the writer's
// transaction, so they reach the stream between the changes they govern.
// ownerState is that table as the stream has applied it: a change is judged
// with its owner's attributes as of the change, live and after downtime (a
// start loads them from walhook.owner_log as of the slot's confirmed LSN).

// ownerStateTable is published with the mapped tables.
const ownerStateTable = "walhook.owner_state"

// ownerEntry is one owner_state row as the stream applied it; attrs nil for
// an owner owners.query does not find.
type ownerEntry struct {
	owner   string
	present bool
	attrs   []byte // jsonb text; nil when removed from the state
	err     string // owners.query failed for it
	removed bool
}

// ownerState is the owners' attributes as of the stream's position. Only
// the consumer's goroutine changes it; Get may run on it too.
type ownerState struct {
	mu sync.Mutex
	// attrs holds each known owner's attributes as CEL values; nil for one
	// the query did not find.
	attrs map[string]map[string]any
	// errs holds the owners whose last refresh failed, with why.
	errs map[string]string
	// fallback loads an owner the state does not know (a subscription older
	// than the triggers, say), live.
	fallback *acl.Owners
	log      *slog.Logger
	warned   bool
	entries  []ownerEntry // the open transaction's, for the log
}

// Get returns the attributes of each of ids that exists, keyed by id.
func (st *ownerState) Get(ctx context.Context, ids []string) (map[string]map[string]any, error) {
	out := make(map[string]map[string]any, len(ids))
	var unknown []string
	st.mu.Lock()
	for _, id := range ids {
		if why := st.errs[id]; why != "" {
			st.mu.Unlock()
			// Not known as of this change: the deliveries are held.
			return nil, fmt.Errorf("owner %s: %s", id, why)
		}
		a, ok := st.attrs[id]
		switch {
		case !ok:
			unknown = append(unknown, id)
		case a != nil:
			out[id] = a
		}
	}
	st.mu.Unlock()
	if len(unknown) == 0 {
		return out, nil
	}
	if !st.warned {
		st.warned = true
		st.log.Warn("owners without a recorded state are loaded as they are now, not as of the change: run walhook install to record them", "owners", len(unknown))
	}
	live, err := st.fallback.Get(ctx, unknown)
	if err != nil {
		return nil, err
	}
	for id, a := range live {
		out[id] = a
	}
	return out, nil
}

// apply takes a change of walhook.owner_state from the stream.
func (st *ownerState) apply(ch *change.Change) error {
	rel := ch.Relation
	row := ch.New
	if ch.Op == change.Delete {
		row = ch.Old
	}
	e := ownerEntry{removed: ch.Op == change.Delete}
	for i, c := range rel.Columns {
		if i >= len(row) || row[i].Kind != change.Text {
			continue
		}
		switch c.Name {
		case "owner":
			e.owner = string(row[i].Text)
		case "present":
			e.present = string(row[i].Text) == "t"
		case "attrs":
			e.attrs = bytes.Clone(row[i].Text)
		case "error":
			e.err = string(row[i].Text)
		}
	}
	if e.owner == "" {
		return fmt.Errorf("walhook.owner_state change without an owner")
	}
	if e.removed {
		e.attrs = nil
	}
	if err := st.set(e); err != nil {
		return err
	}
	st.entries = append(st.entries, e)
	return nil
}

// set records e in the state.
func (st *ownerState) set(e ownerEntry) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.errs, e.owner)
	if e.removed {
		delete(st.attrs, e.owner)
		return nil
	}
	if e.err != "" {
		// The attributes before the failure no longer hold for sure.
		st.errs[e.owner] = e.err
		return nil
	}
	if !e.present {
		st.attrs[e.owner] = nil
		return nil
	}
	a, err := ownerAttrs(e.owner, e.attrs)
	if err != nil {
		return err
	}
	st.attrs[e.owner] = a
	return nil
}

// ownerAttrs converts an owner's jsonb attributes to CEL values once.
// Whole numbers become ints, as owners.query's integer columns were, so
// that row.tenant_id in owner.tenants compares ints with ints.
func ownerAttrs(owner string, text []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("attributes of owner %s: %w", owner, err)
	}
	out := make(map[string]any, len(m)+1)
	for k, v := range m {
		out[k] = expr.Value(numbers(v))
	}
	// owner.id is the subscription's owner, whatever spelling the query
	// returned.
	out["id"] = expr.Value(owner)
	return out, nil
}

// numbers turns json.Numbers into int64 where whole, float64 otherwise.
func numbers(v any) any {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case []any:
		for i := range v {
			v[i] = numbers(v[i])
		}
		return v
	case map[string]any:
		for k := range v {
			v[k] = numbers(v[k])
		}
		return v
	}
	return v
}

// loadOwnerState builds the state as it stood at lsn from walhook.owner_log.
func loadOwnerState(ctx context.Context, db *pgxpool.Pool, lsn pglogrepl.LSN, fallback *acl.Owners, log *slog.Logger) (*ownerState, error) {
	st := &ownerState{attrs: map[string]map[string]any{}, errs: map[string]string{}, fallback: fallback, log: log}
	rows, err := db.Query(ctx, `SELECT DISTINCT ON (owner) owner, present, attrs::text, coalesce(error, '') FROM walhook.owner_log
		WHERE lsn <= $1::text::pg_lsn ORDER BY owner, lsn DESC`, lsn.String())
	if err != nil {
		return nil, fmt.Errorf("load owners as of %s: %w", lsn, err)
	}
	var e ownerEntry
	var present *bool
	var attrs *string
	if _, err := pgx.ForEachRow(rows, []any{&e.owner, &present, &attrs, &e.err}, func() error {
		if present == nil {
			return nil // no longer tracked
		}
		e.present, e.attrs = *present, nil
		if attrs != nil {
			e.attrs = []byte(*attrs)
		}
		return st.set(e)
	}); err != nil {
		return nil, fmt.Errorf("load owners as of %s: %w", lsn, err)
	}
	if _, err := db.Exec(ctx, `DELETE FROM walhook.owner_log l USING (
			SELECT owner, max(lsn) AS lsn FROM walhook.owner_log WHERE lsn <= $1::text::pg_lsn GROUP BY owner) k
		WHERE l.owner = k.owner AND l.lsn < k.lsn`, lsn.String()); err != nil {
		return nil, fmt.Errorf("prune owner log: %w", err)
	}
	return st, nil
}

// writeLog records the open transaction's owner changes at its end LSN;
// writing them again (a replay) changes nothing.
func (st *ownerState) writeLog(ctx context.Context, db *pgxpool.Pool, lsn pglogrepl.LSN) error {
	if len(st.entries) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, e := range st.entries {
		var present any = e.present
		var attrs any
		if e.removed {
			present = nil
		} else if e.attrs != nil {
			attrs = string(e.attrs)
		}
		b.Queue(`INSERT INTO walhook.owner_log (owner, lsn, present, attrs, error) VALUES ($1, $2::text::pg_lsn, $3, $4::jsonb, nullif($5, ''))
			ON CONFLICT (owner, lsn) DO UPDATE SET present = excluded.present, attrs = excluded.attrs, error = excluded.error`,
			e.owner, lsn.String(), present, attrs, e.err)
	}
	st.entries = st.entries[:0]
	if err := db.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write owner log at %s: %w", lsn, err)
	}
	return nil
}

// snapshotOwners records every owner's state at lsn: install calls it when
// it creates a slot, which will never replay how they came to be.
func snapshotOwners(ctx context.Context, conn *pgx.Conn, lsn pglogrepl.LSN) error {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('walhook.owner_log') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO walhook.owner_log (owner, lsn, present, attrs, error)
		SELECT owner, $1::text::pg_lsn, present, attrs, error FROM walhook.owner_state
		ON CONFLICT (owner, lsn) DO NOTHING`, lsn.String()); err != nil {
		return fmt.Errorf("snapshot owners at %s: %w", lsn, err)
	}
	return nil
}

package walhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/mapping"
)

// A delivery walhook cannot judge or shape is held: written to
// walhook.held with its cause and reason, never sent, never dropped. The
// slot then moves on, since the held row, not the WAL, keeps the change.
// walhook.release_held() (and every pipeline start, which may run a fixed
// config) asks for held rows to be judged again; walhook.discard_held()
// drops them on purpose.

// held is one held delivery, or a whole held change when sub is "".
type held struct {
	cause, reason string
	table         string
	sub, owner    string
	event         string
	eventID       string
	ch            *change.Change
	sites         []string
}

// key identifies the held delivery across replays of its change.
func (h *held) key() string {
	return fmt.Sprintf("%s/%d/%s/%s", h.ch.Tx.CommitLSN, h.ch.Seq, h.event, h.sub)
}

// holder writes held deliveries durably.
type holder interface {
	Hold(ctx context.Context, hs []held) error
}

// pgHolder is the holder on walhook.held. A replay of a change already held
// updates its reason; one already released or discarded stays so.
type pgHolder struct{ db *pgxpool.Pool }

func (p pgHolder) Hold(ctx context.Context, hs []held) error {
	return holdRows(ctx, p.db, hs)
}

// execer is a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

func holdRows(ctx context.Context, db execer, hs []held) error {
	n := len(hs)
	var (
		keys, causes, reasons, tables, owners, events, eventIDs, lsns = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]*string, n), make([]*string, n), make([]*string, n), make([]string, n)
		subsIDs                                                       = make([]*string, n)
		times                                                         = make([]*time.Time, n)
		changes                                                       = make([][]byte, n)
	)
	opt := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	for i := range hs {
		h := &hs[i]
		b, err := change.Freeze(h.ch, h.sites)
		if err != nil {
			return fmt.Errorf("hold a change of %s: %w", h.table, err)
		}
		keys[i], causes[i], reasons[i], tables[i] = h.key(), h.cause, h.reason, h.table
		subsIDs[i], owners[i], events[i], eventIDs[i] = opt(h.sub), opt(h.owner), opt(h.event), opt(h.eventID)
		lsns[i], changes[i] = h.ch.Tx.CommitLSN.String(), b
		if t := h.ch.Tx.CommitTime; !t.IsZero() {
			times[i] = &t
		}
	}
	_, err := db.Exec(ctx, `INSERT INTO walhook.held AS h (key, cause, reason, table_name, subscription_id, owner, event, event_id,
			commit_lsn, committed_at, change)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[],
			$9::pg_lsn[], $10::timestamptz[], $11::jsonb[])
		ON CONFLICT (key) DO UPDATE SET cause = excluded.cause, reason = excluded.reason, updated_at = now(),
			release_requested_at = NULL
		WHERE h.status = 'held'`,
		keys, causes, reasons, tables, subsIDs, owners, events, eventIDs, lsns, times, changes)
	if err != nil {
		return fmt.Errorf("hold %d deliveries: %w", n, err)
	}
	return nil
}

// holdLog logs held deliveries loudly but not noisily: at WARN the first
// time a table and cause hold anything, then at most once a minute with the
// count held since.
type holdLog struct {
	log *slog.Logger
	mu  sync.Mutex
	by  map[string]*holdCount
}

type holdCount struct {
	last time.Time
	n    int
}

const holdLogEvery = time.Minute

func (l *holdLog) held(h *held) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[string]*holdCount{}
	}
	k := h.table + "\x00" + h.cause
	c := l.by[k]
	if c == nil {
		c = &holdCount{}
		l.by[k] = c
	}
	c.n++
	if !c.last.IsZero() && time.Since(c.last) < holdLogEvery {
		return
	}
	l.log.Warn("deliveries held: nothing is sent until the cause is fixed and walhook.release_held() is called (or walhook restarts)",
		"table", h.table, "cause", h.cause, "reason", h.reason, "held", c.n)
	c.last, c.n = time.Now(), 0
}

// transient says whether err is one a retry may cure (the database went
// away or is restarting), as opposed to a mistake (a query that does not
// fit the schema, a rule that does not fit the row) that only a fix cures.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) {
		return true
	}
	if pgconn.Timeout(err) || pgconn.SafeToRetry(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "57", "53", "40": // connection, shutdown, resources, serialization/deadlock
			return true
		}
		return false
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr)
}

// mismatch says why t's config no longer fits rel, or "": a column the
// config names (key, site, column filter) or one its rules read is gone.
// It is cached per relation: a relation is replaced, never changed, on DDL.
func (r *router) mismatch(t *mapping.Table, rel *change.Relation) string {
	if why, ok := r.shapes[rel]; ok {
		return why
	}
	if len(r.shapes) > 1000 {
		clear(r.shapes)
	}
	var gone []string
	for _, c := range t.NamedColumns() {
		if rel.ColumnIndex(c.Name) < 0 {
			gone = append(gone, fmt.Sprintf("%s (named in %s)", c.Name, c.Field))
		}
	}
	for _, c := range exprColumns(r.mapper, r.rules, t.Name) {
		if rel.ColumnIndex(c) < 0 && !slices.ContainsFunc(gone, func(g string) bool { return strings.HasPrefix(g, c+" ") }) {
			gone = append(gone, fmt.Sprintf("%s (read by a rule or payload)", c))
		}
	}
	why := ""
	if len(gone) > 0 {
		why = fmt.Sprintf("%s no longer has column %s: fix the config (or the table), then call walhook.release_held()",
			t.Name, strings.Join(gone, ", "))
	}
	r.shapes[rel] = why
	return why
}

// releaseBatch is how many held rows one release pass judges again.
const releaseBatch = 100

// collector is a submitter that keeps requests, for a release.
type collector struct{ reqs []*deliver.Request }

func (c *collector) Submit(_ context.Context, r *deliver.Request) error {
	c.reqs = append(c.reqs, r)
	return nil
}

// releaseHeld judges again up to releaseBatch held rows whose release was
// asked for, in one transaction: those that pass are queued in
// walhook.deliveries (sent by the retry queue, as attempt 1), those still
// failing stay held with their new reason, those now denied are marked
// released with that said. It returns how many rows it took.
func (c *consumer) releaseHeld(ctx context.Context) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, c.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, key, coalesce(subscription_id::text, ''), coalesce(event, ''), change
			FROM walhook.held WHERE status = 'held' AND release_requested_at IS NOT NULL
			ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, releaseBatch)
		if err != nil {
			return fmt.Errorf("read held deliveries to release: %w", err)
		}
		type row struct {
			id              int64
			key, sub, event string
			change          []byte
		}
		var batch []row
		var rw row
		if _, err := pgx.ForEachRow(rows, []any{&rw.id, &rw.key, &rw.sub, &rw.event, &rw.change}, func() error {
			batch = append(batch, rw)
			rw = row{}
			return nil
		}); err != nil {
			return fmt.Errorf("read held deliveries to release: %w", err)
		}
		n = len(batch)
		for _, b := range batch {
			ch, sites, err := change.Thaw(b.change)
			if err != nil {
				// Not routable at all: say so on the row, and leave it held.
				if _, err := tx.Exec(ctx, `UPDATE walhook.held SET release_requested_at = NULL, updated_at = now(), reason = $2
					WHERE id = $1`, b.id, "cannot be judged again: "+err.Error()); err != nil {
					return fmt.Errorf("mark held delivery %d: %w", b.id, err)
				}
				continue
			}
			out := &collector{}
			rr := c.releaser(out)
			rr.only = b.sub
			if err := rr.route(ctx, nopWork{}, ch, sites); err != nil {
				return err
			}
			again := false
			for i := range rr.pendingHolds {
				if rr.pendingHolds[i].key() == b.key {
					again = true
				}
			}
			if len(rr.pendingHolds) > 0 {
				if err := holdRows(ctx, tx, rr.pendingHolds); err != nil {
					return err
				}
			}
			if err := deliver.Enqueue(ctx, tx, out.reqs); err != nil {
				return err
			}
			if again {
				continue // the upsert above left it held, with the new reason
			}
			res := fmt.Sprintf("judged again: %d queued, %d held", len(out.reqs), len(rr.pendingHolds))
			if len(out.reqs) == 0 && len(rr.pendingHolds) == 0 {
				res = "judged again: nothing to send (the rule denies it now, or the subscription is gone or inactive)"
			}
			if _, err := tx.Exec(ctx, `UPDATE walhook.held SET status = 'released', resolved_at = now(), updated_at = now(),
				resolution = $2 WHERE id = $1`, b.id, res); err != nil {
				return fmt.Errorf("mark held delivery %d released: %w", b.id, err)
			}
		}
		return nil
	})
	return n, err
}

// nopWork is the work of a release: the change's transaction was
// acknowledged long ago.
type nopWork struct{}

func (nopWork) Add(int) {}
func (nopWork) Done()   {}

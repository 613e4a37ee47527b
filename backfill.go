package walhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/metrics"
	"github.com/walhook/walhook/mapping"
)

// A backfill sends one subscription the rows of a table that already exist,
// as <noun>.existing events, consistently with the stream (the watermark
// technique of Netflix's DBLog and Debezium's incremental snapshots):
//
//  1. the reader (backfiller.run, on the leader) emits a low watermark, a
//     logical message in its own transaction;
//  2. it reads the next chunk of rows in key order, after the last key;
//  3. it emits a high watermark.
//
// The consumer meets both watermarks in commit order. Between them it notes
// the key of every change of the table; at the high watermark it drops those
// rows from the chunk (the stream already carries their newer state, or
// their delete) and routes the rest, through the router restricted to the
// one subscription, before any change that commits after the high
// watermark. A change that committed before the low watermark is in the
// chunk as read; one after the high watermark comes after the chunk.
//
// The chunk's deliveries go to the worker like live ones, and count as done
// when sent or durably queued (the acknowledgement rule). Only then does the
// reader record the chunk's last key and rows sent, and read the next one:
// at most one chunk is in memory, and a restart resumes from the last
// finished chunk (its rows may be sent again, with the same event ids).

// DefaultBackfillChunk is how many rows a backfill reads per chunk.
const DefaultBackfillChunk = 1000

// backfillPoll is how often the reader looks for backfills when the stream
// announced none (a start missed while no leader ran is found so).
const backfillPoll = 2 * time.Second

// backfiller runs backfills. run is the reader's goroutine; low, saw and
// high are the consumer's, called in stream order.
type backfiller struct {
	db      *pgxpool.Pool
	mapper  *mapping.Mapper
	log     *slog.Logger
	metrics *metrics.Metrics
	chunk   int
	wake    chan struct{}

	mu      sync.Mutex
	pending *chunk // the chunk between its watermarks, as the reader left it

	// window is the chunk whose low watermark the consumer met and whose
	// high watermark it has not; consumer goroutine only.
	window *chunk

	// active is the table a backfill is reading, if any: while it is set
	// the consumer remembers the xid and key of each change of it in
	// recent (consumer goroutine only), so that a chunk can drop the rows
	// of transactions its snapshot did not see although they committed
	// before its low watermark (see snapshot).
	active atomic.Pointer[activeTable]
	recent []recentChange
	// chunkRead is a test hook (Service.hooks); nil in production.
	chunkRead func(rows []change.Row)
	recentAt  int
}

// recentSize bounds recent: a transaction must commit in the WAL ahead of
// a chunk's low watermark yet still be invisible to the chunk's snapshot,
// taken after that watermark committed, to need it; that gap is the few
// instructions between writing a commit record and leaving the proc array
// (or a synchronous standby's acknowledgement), not thousands of changes.
const recentSize = 1 << 14

// activeTable is the table a backfill reads and the columns it orders by:
// the consumer must key a change by exactly these. The stream's relation
// marks every column as key under REPLICA IDENTITY FULL (which install
// sets for tables whose old rows are read), so its own key flags would
// give a key no chunk row has.
type activeTable struct {
	table *mapping.Table
	key   []string
}

type recentChange struct {
	xid   uint32
	table *mapping.Table
	key   string
}

// snapshot is a chunk's MVCC snapshot (pg_current_snapshot() in the
// chunk's transaction). Commit order in the WAL and visibility order can
// differ: a transaction whose commit record precedes the low watermark may
// not yet be visible when the chunk is read (its backend has not left the
// proc array; more likely under synchronous_commit=off, a loaded machine
// or a synchronous standby). Its live event is then before the window and
// the chunk holds the row's older state, so the window alone would send
// that older state after the newer event. The xids the snapshot does not
// see identify such transactions exactly.
type snapshot struct {
	xmax uint32
	xip  map[uint32]bool
}

// sees reports whether the snapshot saw transaction xid's changes
// (committed ones only reach the stream). xids compare modulo 2^32.
func (s *snapshot) sees(xid uint32) bool {
	if s == nil {
		return true
	}
	return int32(xid-s.xmax) < 0 && !s.xip[xid]
}

// parseSnapshot parses pg_current_snapshot()'s text, xmin:xmax:xip,...
func parseSnapshot(text string) (*snapshot, error) {
	parts := strings.Split(text, ":")
	if len(parts) != 3 {
		return nil, fmt.Errorf("snapshot %q: want xmin:xmax:xip", text)
	}
	if _, err := strconv.ParseUint(parts[0], 10, 64); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", text, err)
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", text, err)
	}
	s := &snapshot{xmax: uint32(xmax), xip: map[uint32]bool{}}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("snapshot %q: %w", text, err)
			}
			s.xip[uint32(v)] = true
		}
	}
	return s, nil
}

// chunk is one chunk of one backfill's table.
type chunk struct {
	token    string // "<backfill>/<table>/<n>", the watermarks' content
	backfill int64
	sub      string
	table    *mapping.Table
	rel      *change.Relation
	keyCols  []int
	readAt   time.Time
	rows     []change.Row // set under backfiller.mu before the high watermark
	snap     *snapshot    // the snapshot rows were read in; same
	changed  map[string]bool
	// truncated: the table was truncated between the watermarks.
	truncated bool
	sent      atomic.Int64 // deliveries submitted
	routed    int          // rows routed (not dropped)
	work      chunkWork
	finished  chan struct{} // closed when the consumer routed it
}

// chunkWork counts a chunk's deliveries not yet sent or durably queued.
type chunkWork struct {
	n    atomic.Int64
	done chan struct{}
}

func (w *chunkWork) Add(n int) { w.n.Add(int64(n)) }
func (w *chunkWork) Done() {
	if w.n.Add(-1) == 0 {
		close(w.done)
	}
}

func newBackfiller(db *pgxpool.Pool, mapper *mapping.Mapper, log *slog.Logger, m *metrics.Metrics, chunk int) *backfiller {
	if chunk <= 0 {
		chunk = DefaultBackfillChunk
	}
	return &backfiller{db: db, mapper: mapper, log: log.With("component", "backfill"), metrics: m, chunk: chunk, wake: make(chan struct{}, 1)}
}

// keyOf returns the text of row's key columns, joined by NUL; ok is false
// when one is unknown (an unchanged TOAST value).
func keyOf(row change.Row, cols []int) (string, bool) {
	var b strings.Builder
	for i, c := range cols {
		if c < 0 || c >= len(row) || row[c].Kind == change.Unchanged {
			return "", false
		}
		if i > 0 {
			b.WriteByte(0)
		}
		if row[c].Kind == change.Text {
			b.Write(row[c].Text)
		}
	}
	return b.String(), true
}

// message handles a backfill's logical message in the stream.
func (b *backfiller) message(ctx context.Context, c *consumer, m cdc.Message) error {
	verb, arg, _ := strings.Cut(m.Site, " ")
	switch verb {
	case "start", "cancel":
		select {
		case b.wake <- struct{}{}:
		default:
		}
	case "low":
		b.mu.Lock()
		p := b.pending
		b.mu.Unlock()
		b.window = nil
		if p != nil && p.token == arg {
			b.window = p
		}
		// A watermark of no chunk the reader waits for is a replay, after
		// a restart: the reader reads that chunk again.
	case "high":
		w := b.window
		b.window = nil
		if w == nil || w.token != arg {
			return nil
		}
		b.mu.Lock()
		rows, snap := w.rows, w.snap
		b.mu.Unlock()
		// Rows of transactions already streamed but invisible to the
		// chunk's snapshot: the chunk holds their older state (see
		// snapshot).
		for _, r := range b.recent {
			if r.table == w.table && r.xid != 0 && !snap.sees(r.xid) {
				w.changed[r.key] = true
			}
		}
		return b.route(ctx, c, w, rows, m)
	}
	return nil
}

// saw notes a change of the stream: a row of the open window's table that
// changed between the watermarks is dropped from its chunk.
func (b *backfiller) saw(c *consumer, ch *change.Change) {
	a := b.active.Load()
	if a == nil || c.router.table(ch.Relation) != a.table {
		return
	}
	t := a.table
	w := b.window
	if w != nil && w.table != t {
		w = nil
	}
	if ch.Op == change.Truncate {
		// Every row the chunk read is gone: send none of them. (A chunk is
		// read under a lock that makes a TRUNCATE wait for it, so one that
		// committed before the low watermark is seen by the chunk's read.)
		if w != nil {
			w.truncated = true
		}
		return
	}
	cols := make([]int, len(a.key))
	for i, k := range a.key {
		cols[i] = ch.Relation.ColumnIndex(k)
	}
	var xid uint32
	if ch.Tx != nil {
		xid = ch.Tx.XID
	}
	for _, row := range []change.Row{ch.New, ch.Old} {
		if k, ok := keyOf(row, cols); ok && row != nil {
			if w != nil {
				w.changed[k] = true
			}
			if b.recent == nil {
				b.recent = make([]recentChange, recentSize)
			}
			b.recent[b.recentAt] = recentChange{xid: xid, table: t, key: k}
			b.recentAt = (b.recentAt + 1) % recentSize
		}
	}
}

// route sends the rows of w not changed between its watermarks.
func (b *backfiller) route(ctx context.Context, c *consumer, w *chunk, rows []change.Row, m cdc.Message) error {
	defer close(w.finished)
	rr := c.releaser(c.router.out)
	rr.holder = pgHolder{c.db}
	rr.only, rr.existing = w.sub, w.backfill
	tx := &change.Tx{CommitLSN: m.Txn.CommitLSN, EndLSN: m.Txn.CommitLSN, CommitTime: w.readAt}
	counted := &countingWork{w: &w.work, n: &w.sent}
	w.work.Add(1)
	defer w.work.Done()
	read := len(rows)
	if w.truncated {
		rows = nil
	}
	for i, row := range rows {
		k, _ := keyOf(row, w.keyCols)
		if w.changed[k] {
			continue
		}
		rr.existingKey = k
		ch := &change.Change{Relation: w.rel, Op: change.Insert, New: row, Tx: tx, Seq: uint32(i)}
		if err := rr.route(ctx, counted, ch, nil); err != nil {
			return err
		}
		w.routed++
	}
	if left := read - w.routed; left > 0 {
		// Not sent: the stream carries these rows' newer state (or delete).
		b.log.Debug("rows of a chunk changed while it was read: left to their live events",
			"backfill_id", w.backfill, "table", w.table.Name, "rows", left)
	}
	return nil
}

// countingWork is a chunk's work that also counts its deliveries.
type countingWork struct {
	w *chunkWork
	n *atomic.Int64
}

func (c *countingWork) Add(n int) { c.w.Add(n); c.n.Add(int64(n)) }
func (c *countingWork) Done()     { c.w.Done() }

// job is one table of one backfill.
type job struct {
	id      int64
	table   string
	sub     string
	lastKey []string
}

// run reads backfills until ctx ends. Only a database that went away is an
// error; a backfill that cannot go on is marked failed.
func (b *backfiller) run(ctx context.Context) error {
	tick := time.NewTicker(backfillPoll)
	defer tick.Stop()
	for {
		j, ok, err := b.next(ctx)
		if err != nil {
			return err
		}
		if ok {
			if err := b.runJob(ctx, j); err != nil {
				if transient(err) || ctx.Err() != nil {
					return err
				}
				b.log.Warn("backfill failed", "backfill_id", j.id, "table", j.table, "err", err)
				b.metrics.BackfillFinished.WithLabelValues(metrics.BackfillFailed).Inc()
				if _, err := b.db.Exec(ctx, `UPDATE walhook.backfills SET status = 'failed', error = $3, finished_at = now()
					WHERE id = $1 AND table_name = $2 AND status IN ('pending', 'running')`, j.id, j.table, err.Error()); err != nil {
					return fmt.Errorf("mark backfill %d failed: %w", j.id, err)
				}
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-b.wake:
		case <-tick.C:
		}
	}
}

// next returns the oldest backfill table not finished.
func (b *backfiller) next(ctx context.Context) (job, bool, error) {
	var j job
	err := b.db.QueryRow(ctx, `SELECT id, table_name, subscription_id::text, coalesce(last_key, '{}')
		FROM walhook.backfills WHERE status IN ('pending', 'running') ORDER BY id, table_name LIMIT 1`).
		Scan(&j.id, &j.table, &j.sub, &j.lastKey)
	if errors.Is(err, pgx.ErrNoRows) {
		return j, false, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return j, false, nil
		}
		return j, false, fmt.Errorf("read backfills: %w", err)
	}
	return j, true, nil
}

// runJob sends one table of one backfill, chunk after chunk.
func (b *backfiller) runJob(ctx context.Context, j job) error {
	t := b.mapper.Table(j.table)
	if t == nil {
		return fmt.Errorf("table %s is no longer mapped", j.table)
	}
	rel, keyCols, keyTypes, err := b.relation(ctx, t)
	if err != nil {
		return err
	}
	if _, err := b.db.Exec(ctx, `UPDATE walhook.backfills SET status = 'running', started_at = coalesce(started_at, now()),
			estimate = coalesce(estimate, (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $3::regclass))
		WHERE id = $1 AND table_name = $2 AND status = 'pending'`, j.id, j.table, quoteTable(j.table)); err != nil {
		return fmt.Errorf("start backfill %d: %w", j.id, err)
	}
	b.log.Info("backfill running", "backfill_id", j.id, "table", j.table, "subscription_id", j.sub)
	b.metrics.BackfillRunning.Set(1)
	defer b.metrics.BackfillRunning.Set(0)
	a := &activeTable{table: t}
	for _, c := range keyCols {
		a.key = append(a.key, rel.Columns[c].Name)
	}
	b.active.Store(a)
	defer b.active.Store(nil)
	last := j.lastKey
	for n := 0; ; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Rows for a subscription that cannot get them would be skipped
		// without a word: the backfill fails instead, saying why.
		var active bool
		if err := b.db.QueryRow(ctx, `SELECT active FROM walhook.subscriptions WHERE id = $1`, j.sub).Scan(&active); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("subscription %s was removed", j.sub)
			}
			return fmt.Errorf("read subscription %s: %w", j.sub, err)
		}
		if !active {
			return fmt.Errorf("subscription %s is inactive: activate it and start a new backfill", j.sub)
		}
		c := &chunk{
			token:    fmt.Sprintf("%d/%s/%d/%d", j.id, j.table, n, time.Now().UnixNano()),
			backfill: j.id, sub: j.sub, table: t, rel: rel, keyCols: keyCols,
			changed: map[string]bool{}, finished: make(chan struct{}),
		}
		c.work.done = make(chan struct{})
		b.mu.Lock()
		b.pending = c
		b.mu.Unlock()
		if err := b.emit(ctx, "low "+c.token); err != nil {
			return err
		}
		rows, snap, err := b.read(ctx, t, rel, keyCols, keyTypes, last)
		if err != nil {
			return err
		}
		if b.chunkRead != nil {
			b.chunkRead(rows)
		}
		b.mu.Lock()
		c.rows, c.snap, c.readAt = rows, snap, time.Now()
		b.mu.Unlock()
		if err := b.emit(ctx, "high "+c.token); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.finished:
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.work.done:
		}
		b.mu.Lock()
		b.pending = nil
		b.mu.Unlock()
		done := len(rows) < b.chunk
		if len(rows) > 0 {
			k := rows[len(rows)-1]
			last = make([]string, len(keyCols))
			for i, col := range keyCols {
				last[i] = string(k[col].Text)
			}
		}
		status := "running"
		if done {
			status = "done"
		}
		tag, err := b.db.Exec(ctx, `UPDATE walhook.backfills SET last_key = $3, rows_sent = rows_sent + $4, status = $5,
				finished_at = CASE WHEN $5 = 'done' THEN now() END
			WHERE id = $1 AND table_name = $2 AND status = 'running'`, j.id, j.table, last, c.sent.Load(), status)
		if err != nil {
			return fmt.Errorf("record backfill %d progress: %w", j.id, err)
		}
		if tag.RowsAffected() == 0 {
			b.log.Info("backfill cancelled", "backfill_id", j.id, "table", j.table)
			b.metrics.BackfillFinished.WithLabelValues(metrics.BackfillCancelled).Inc()
			return nil
		}
		b.metrics.BackfillRows.WithLabelValues(j.table).Add(float64(c.sent.Load()))
		if done {
			b.log.Info("backfill done", "backfill_id", j.id, "table", j.table)
			b.metrics.BackfillFinished.WithLabelValues(metrics.BackfillDone).Inc()
			return nil
		}
	}
}

// emit commits a watermark.
func (b *backfiller) emit(ctx context.Context, content string) error {
	// The watermark's commit is flushed at once even where
	// synchronous_commit is off: the stream sends only flushed WAL, and a
	// commit waiting for the WAL writer (up to wal_writer_delay, 200ms by
	// default) would idle the backfill twice per chunk.
	if _, err := b.db.Exec(ctx, `SELECT set_config('synchronous_commit', 'on', true), pg_logical_emit_message(true, $1, $2)`,
		cdc.BackfillPrefix, content); err != nil {
		return fmt.Errorf("emit backfill watermark: %w", err)
	}
	return nil
}

// relation describes t as the stream would: its columns (those pgoutput
// publishes: not dropped, not generated) with their types, and the key
// columns the backfill orders by (the table's key, else its primary key).
func (b *backfiller) relation(ctx context.Context, t *mapping.Table) (*change.Relation, []int, []string, error) {
	schema, name, _ := strings.Cut(t.Name, ".")
	rows, err := b.db.Query(ctx, `SELECT c.oid, a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
			coalesce(a.attnum = ANY (i.indkey), false),
			coalesce(ty.typtype = 'd', false), coalesce(ty.typbasetype, 0)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		JOIN pg_type ty ON ty.oid = a.atttypid
		LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
		WHERE n.nspname = $1 AND c.relname = $2 ORDER BY a.attnum`, schema, name)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("describe %s: %w", t.Name, err)
	}
	rel := &change.Relation{Schema: schema, Name: name, ReplicaIdentity: 'd'}
	var types []string
	var pk []int
	for rows.Next() {
		var col change.Column
		var typ string
		var isPK, domain bool
		var base uint32
		if err := rows.Scan(&rel.ID, &col.Name, &col.TypeOID, &typ, &isPK, &domain, &base); err != nil {
			rows.Close()
			return nil, nil, nil, fmt.Errorf("describe %s: %w", t.Name, err)
		}
		col.Key = isPK
		col.Enc = change.EncoderFor(col.TypeOID)
		if domain {
			col.Base = base
			col.Enc = change.EncoderFor(base)
		}
		if isPK {
			pk = append(pk, len(rel.Columns))
		}
		rel.Columns = append(rel.Columns, col)
		types = append(types, typ)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("describe %s: %w", t.Name, err)
	}
	if len(rel.Columns) == 0 {
		return nil, nil, nil, fmt.Errorf("table %s does not exist", t.Name)
	}
	keyCols := pk
	if len(t.Config.Key) > 0 {
		keyCols = nil
		for _, k := range t.Config.Key {
			i := rel.ColumnIndex(k)
			if i < 0 {
				return nil, nil, nil, fmt.Errorf("table %s has no key column %s", t.Name, k)
			}
			keyCols = append(keyCols, i)
		}
	}
	if len(keyCols) == 0 {
		return nil, nil, nil, fmt.Errorf("table %s has no key to read it in order by (set tables[].key)", t.Name)
	}
	keyTypes := make([]string, len(keyCols))
	for i, c := range keyCols {
		keyTypes[i] = types[c]
	}
	return rel, keyCols, keyTypes, nil
}

// read reads the chunk after last (nil for the first) in key order, each
// column in the text form the stream sends (the settings cdc uses).
func (b *backfiller) read(ctx context.Context, t *mapping.Table, rel *change.Relation, keyCols []int, keyTypes []string, last []string) ([]change.Row, *snapshot, error) {
	var sel, keys, after []string
	for _, c := range rel.Columns {
		sel = append(sel, "r."+pgx.Identifier{c.Name}.Sanitize()+"::text")
	}
	for i, c := range keyCols {
		// Qualified: ORDER BY a bare name would sort by the text output
		// column of that name.
		keys = append(keys, "r."+pgx.Identifier{rel.Columns[c].Name}.Sanitize())
		after = append(after, "($1::text[])["+strconv.Itoa(i+1)+"]::"+keyTypes[i])
	}
	q := "SELECT " + strings.Join(sel, ", ") + " FROM " + quoteTable(t.Name) + " AS r"
	args := []any{}
	if len(last) == len(keyCols) {
		q += " WHERE (" + strings.Join(keys, ", ") + ") > (" + strings.Join(after, ", ") + ")"
		args = append(args, last)
	} else {
		q += " WHERE $1::text[] IS NULL"
		args = append(args, nil)
	}
	q += " ORDER BY " + strings.Join(keys, ", ") + " LIMIT " + strconv.Itoa(b.chunk)
	var out []change.Row
	var snap *snapshot
	// REPEATABLE READ: the chunk is read in the snapshot recorded with it.
	err := pgx.BeginTxFunc(ctx, b.db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var text string
		if err := tx.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&text); err != nil {
			return err
		}
		var err error
		if snap, err = parseSnapshot(text); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL TimeZone = 'UTC'; SET LOCAL IntervalStyle = 'postgres';
			SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		vals := make([]*string, len(rel.Columns))
		dst := make([]any, len(vals))
		for i := range vals {
			dst[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(dst...); err != nil {
				return err
			}
			row := make(change.Row, len(vals))
			for i, v := range vals {
				if v == nil {
					row[i] = change.Datum{Kind: change.Null}
				} else {
					row[i] = change.Datum{Kind: change.Text, Text: []byte(*v)}
				}
			}
			out = append(out, row)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read a chunk of %s: %w", t.Name, err)
	}
	return out, snap, nil
}

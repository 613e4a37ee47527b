package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SubscriptionsTable is published alongside the mapped tables so that changes
// to subscriptions reach the index in commit order with the rows they govern.
const SubscriptionsTable = "walhook.subscriptions"

// ErrSlotMissing means the replication slot does not exist: run walhook install.
var ErrSlotMissing = errors.New("replication slot does not exist (run walhook install)")

// quoteQualified quotes "schema.table" as an identifier pair.
func quoteQualified(name string) string {
	s, t, ok := strings.Cut(name, ".")
	if !ok {
		return pgx.Identifier{name}.Sanitize()
	}
	return pgx.Identifier{s, t}.Sanitize()
}

// publishOptions are the publication's settings: row changes, truncates
// when a table maps them, and a partition's changes under the partitioned
// table that was published (so a mapped partitioned table produces changes
// under its own name, and pg_publication_tables lists it rather than its
// partitions).
func publishOptions(truncate bool) string {
	return fmt.Sprintf("publish = '%s', publish_via_partition_root = true", publishedOps(truncate))
}

// publishedOps lists the operations the publication publishes.
func publishedOps(truncate bool) string {
	if truncate {
		return "insert, update, delete, truncate"
	}
	return "insert, update, delete"
}

// Querier is a *pgx.Conn or a pgx.Tx.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// EnsurePublication creates the publication for tables or brings its table list
// in line, publishing inserts, updates and deletes, truncates only when
// truncate is set (a table maps them), partitions via their root. It returns
// what it changed; nothing when the publication is already right. conn may
// be a transaction: publications are transactional.
func EnsurePublication(ctx context.Context, conn Querier, name string, tables []string, truncate bool) ([]string, error) {
	want := slices.Clone(tables)
	slices.Sort(want)
	want = slices.Compact(want)
	list := make([]string, len(want))
	for i, t := range want {
		list[i] = quoteQualified(t)
	}
	pub := pgx.Identifier{name}.Sanitize()

	var pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot bool
	err := conn.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1`, name).
		Scan(&pubinsert, &pubupdate, &pubdelete, &pubtruncate, &pubviaroot)
	if errors.Is(err, pgx.ErrNoRows) {
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (%s)", pub, strings.Join(list, ", "), publishOptions(truncate))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("create publication %q: %w", name, err)
		}
		return []string{fmt.Sprintf("created publication %s for %s", name, strings.Join(want, ", "))}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", name, err)
	}
	var changes []string
	if !pubinsert || !pubupdate || !pubdelete || pubtruncate != truncate || !pubviaroot {
		// Before reading its tables: with publish_via_partition_root,
		// pg_publication_tables lists a partitioned table, not its partitions.
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET (%s)", pub, publishOptions(truncate))); err != nil {
			return nil, fmt.Errorf("alter publication %q: %w", name, err)
		}
		changes = append(changes, "publication "+name+" publishes "+publishedOps(truncate)+", partitions via their partitioned table")
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, name)
	if err != nil {
		return nil, fmt.Errorf("read tables of publication %q: %w", name, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read tables of publication %q: %w", name, err)
	}
	if !slices.Equal(have, want) {
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s", pub, strings.Join(list, ", "))); err != nil {
			return nil, fmt.Errorf("set tables of publication %q: %w", name, err)
		}
		changes = append(changes, fmt.Sprintf("publication %s now covers %s", name, strings.Join(want, ", ")))
	}
	return changes, nil
}

// SlotInfo is what pg_replication_slots says of a slot. Columns that the
// server's version lacks read as their zero value.
type SlotInfo struct {
	Name           string
	Plugin         string
	Database       string
	Active         bool
	ActivePID      int32
	ConfirmedFlush pglogrepl.LSN
	RestartLSN     pglogrepl.LSN
	// RetainedBytes is the WAL the slot keeps from being recycled.
	RetainedBytes int64
	// WALStatus is reserved, extended, unreserved or lost (13+).
	WALStatus string
	// InvalidationReason says why the slot was invalidated (17+): wal_removed,
	// rows_removed, wal_level_insufficient, idle_timeout (18+).
	InvalidationReason string
	// Conflicting: invalidated by a conflict with recovery (16+).
	Conflicting bool
	// Failover: a standby with sync_replication_slots=on keeps a copy that
	// survives its promotion (17+).
	Failover bool
	// Synced: this is such a copy, on a standby (17+).
	Synced bool
}

// Lost says whether the slot was invalidated, and why, in the words of
// InvalidationReason where the server gives one. A lost slot can never
// stream again: the server refuses to decode from it.
func (si SlotInfo) Lost() (reason string, lost bool) {
	switch {
	case si.InvalidationReason != "":
		return si.InvalidationReason, true
	case si.WALStatus == "lost":
		// Before 17 no reason is named. PostgreSQL 16 sets conflicting for
		// every invalidation, this one included (seen in the version
		// matrix), so wal_status decides first.
		return "wal_removed", true
	case si.Conflicting:
		// 16 only: a logical slot on a standby invalidated by a conflict
		// with recovery (rows_removed or wal_level_insufficient).
		return "conflict with recovery", true
	}
	return "", false
}

// SlotLostError means the slot was invalidated: the server removed WAL (or
// catalog rows) it still needed, so the changes committed after ConfirmedLSN
// can no longer be decoded and may never have been delivered. Retrying
// cannot cure it. errors.Is(err, ErrSlotMissing) holds for it too, since a
// lost slot is as unusable as a missing one and callers that stop on a
// missing slot must stop on this; errors.As tells the two apart.
type SlotLostError struct {
	Slot         string
	Reason       string        // InvalidationReason, or wal_removed before 17
	ConfirmedLSN pglogrepl.LSN // the last position whose changes were delivered
}

func (e *SlotLostError) Error() string {
	return fmt.Sprintf("replication slot %q was invalidated by PostgreSQL (%s): %s; "+
		"changes committed after %s may not have been delivered and can no longer be read from the slot; "+
		"recover with `walhook install --recreate-slot`, then a backfill (walhook.backfill) of the affected subscriptions "+
		"for rows changed since then", e.Slot, e.Reason, lostReasonText(e.Reason), e.ConfirmedLSN)
}

// Is makes a lost slot count as a missing one; see SlotLostError.
func (e *SlotLostError) Is(target error) bool { return target == ErrSlotMissing }

func lostReasonText(reason string) string {
	switch reason {
	case "wal_removed":
		return "the slot fell further behind than max_slot_wal_keep_size allows, and the WAL it needed was removed"
	case "rows_removed":
		return "catalog rows it needed were removed (on a standby: turn on hot_standby_feedback and use a physical slot)"
	case "wal_level_insufficient":
		return "the primary's wal_level is below logical"
	case "idle_timeout":
		return "the slot was idle longer than idle_replication_slot_timeout"
	}
	return "the server can no longer decode from it"
}

// slotQuery reads a row of pg_replication_slots as JSON: the columns
// differ by version (wal_status 13+, conflicting 16+, failover, synced and
// invalidation_reason 17+), and to_jsonb carries whichever exist without
// naming them. The retained WAL is counted from the replay position on a
// standby, where pg_current_wal_lsn() fails.
const slotQuery = `SELECT to_jsonb(s)::text,
		coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
			s.restart_lsn), 0)::bigint
	FROM pg_replication_slots s WHERE slot_name = `

type slotRow struct {
	Name               string  `json:"slot_name"`
	Plugin             *string `json:"plugin"`
	Database           *string `json:"database"`
	Active             bool    `json:"active"`
	ActivePID          *int32  `json:"active_pid"`
	ConfirmedFlush     *string `json:"confirmed_flush_lsn"`
	RestartLSN         *string `json:"restart_lsn"`
	WALStatus          *string `json:"wal_status"`
	InvalidationReason *string `json:"invalidation_reason"`
	Conflicting        *bool   `json:"conflicting"`
	Failover           *bool   `json:"failover"`
	Synced             *bool   `json:"synced"`
}

// parseSlotRow turns slotQuery's JSON into a SlotInfo.
func parseSlotRow(js []byte, retained int64) (SlotInfo, error) {
	var r slotRow
	if err := json.Unmarshal(js, &r); err != nil {
		return SlotInfo{}, err
	}
	deref := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	si := SlotInfo{
		Name: r.Name, Plugin: deref(r.Plugin), Database: deref(r.Database), Active: r.Active,
		RetainedBytes: retained, WALStatus: deref(r.WALStatus), InvalidationReason: deref(r.InvalidationReason),
		Conflicting: r.Conflicting != nil && *r.Conflicting, Failover: r.Failover != nil && *r.Failover,
		Synced: r.Synced != nil && *r.Synced,
	}
	if r.ActivePID != nil {
		si.ActivePID = *r.ActivePID
	}
	var err error
	if r.ConfirmedFlush != nil {
		if si.ConfirmedFlush, err = pglogrepl.ParseLSN(*r.ConfirmedFlush); err != nil {
			return si, fmt.Errorf("confirmed_flush_lsn: %w", err)
		}
	}
	if r.RestartLSN != nil {
		if si.RestartLSN, err = pglogrepl.ParseLSN(*r.RestartLSN); err != nil {
			return si, fmt.Errorf("restart_lsn: %w", err)
		}
	}
	return si, nil
}

// Slot reads the slot's state; ErrSlotMissing when there is none. When the
// slot was invalidated it returns the state and a *SlotLostError.
func Slot(ctx context.Context, conn *pgx.Conn, name string) (SlotInfo, error) {
	var js []byte
	var retained int64
	err := conn.QueryRow(ctx, slotQuery+"$1", name).Scan(&js, &retained)
	if errors.Is(err, pgx.ErrNoRows) {
		return SlotInfo{}, fmt.Errorf("slot %q: %w", name, ErrSlotMissing)
	}
	if err != nil {
		return SlotInfo{}, fmt.Errorf("read slot %q: %w", name, err)
	}
	si, err := parseSlotRow(js, retained)
	if err != nil {
		return si, fmt.Errorf("slot %q: %w", name, err)
	}
	if reason, lost := si.Lost(); lost {
		return si, &SlotLostError{Slot: name, Reason: reason, ConfirmedLSN: si.ConfirmedFlush}
	}
	return si, nil
}

// failoverVersion is the first server_version_num with failover slots.
const failoverVersion = 170000

// alterSlotTimeout bounds enabling failover on an existing slot, which waits
// while another process holds the slot.
const alterSlotTimeout = 5 * time.Second

// EnsureSlot creates the logical slot with pgoutput unless it exists, with
// failover enabled where the server has it (17+), so that a standby with
// sync_replication_slots=on keeps a copy that survives a promotion. It
// returns a line saying what it created ("" when the slot existed) and the
// slot's confirmed LSN. A lost slot is a *SlotLostError: install must not
// paper over the range it lost.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, name string) (string, pglogrepl.LSN, error) {
	si, err := Slot(ctx, conn, name)
	if err == nil {
		if si.Plugin != "pgoutput" {
			return "", 0, fmt.Errorf("slot %q uses plugin %q, want pgoutput: drop it or choose another --slot", name, si.Plugin)
		}
		if si.Failover || si.Synced {
			return "", si.ConfirmedFlush, nil
		}
		line, err := enableFailover(ctx, conn, si)
		return line, si.ConfirmedFlush, err
	}
	var lost *SlotLostError
	if errors.As(err, &lost) || !errors.Is(err, ErrSlotMissing) {
		return "", 0, err
	}
	return createSlot(ctx, conn, name)
}

func createSlot(ctx context.Context, conn *pgx.Conn, name string) (string, pglogrepl.LSN, error) {
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return "", 0, fmt.Errorf("create slot %q: read server version: %w", name, err)
	}
	failover := version >= failoverVersion
	sql := `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`
	if failover {
		sql = `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', failover => true)`
	}
	var lsn string
	if err := conn.QueryRow(ctx, sql, name).Scan(&lsn); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55000" {
			return "", 0, fmt.Errorf("create slot %q: %w (is wal_level = logical? it needs a restart of PostgreSQL)", name, err)
		}
		return "", 0, fmt.Errorf("create slot %q: %w", name, err)
	}
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return "", 0, fmt.Errorf("create slot %q: %w", name, err)
	}
	line := fmt.Sprintf("created replication slot %s at %s", name, l)
	if failover {
		line += " with failover (standbys with sync_replication_slots = on keep it across a promotion)"
	} else {
		line += fmt.Sprintf(" without failover (PostgreSQL %d has none: after a promotion the slot is gone)", version/10000)
	}
	return line, l, nil
}

// enableFailover turns failover on for a slot created without it (by an
// older walhook, or before an upgrade to 17), on servers that have it. The
// SQL function cannot; the replication command ALTER_REPLICATION_SLOT can,
// on a replication connection of its own, and only while no one streams
// from the slot: then the returned line says to run install again later.
func enableFailover(ctx context.Context, conn *pgx.Conn, si SlotInfo) (string, error) {
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return "", fmt.Errorf("slot %q: read server version: %w", si.Name, err)
	}
	if version < failoverVersion {
		return "", nil
	}
	inUse := fmt.Sprintf("replication slot %s has no failover and is in use, so it was left as it is: "+
		"run walhook install again while walhook is stopped to enable failover", si.Name)
	// ALTER_REPLICATION_SLOT waits for a slot in use to be released rather
	// than failing, hence the check first and the bound below for a slot
	// taken in between.
	if si.Active {
		return inUse, nil
	}
	pc := conn.Config().Config.Copy()
	pc.RuntimeParams["replication"] = "database"
	rc, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return "", fmt.Errorf("slot %q: open replication connection to enable failover: %w", si.Name, err)
	}
	defer rc.Close(context.WithoutCancel(ctx))
	actx, cancel := context.WithTimeout(ctx, alterSlotTimeout)
	defer cancel()
	_, err = rc.Exec(actx, "ALTER_REPLICATION_SLOT "+pgx.Identifier{si.Name}.Sanitize()+" ( FAILOVER true )").ReadAll()
	if errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		// Cancel explicitly rather than rely on the hang-up: a walsender
		// that went on waiting would take the slot the moment its holder
		// lets go.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), alterSlotTimeout)
		_ = rc.CancelRequest(cctx)
		ccancel()
		return inUse, nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55006" {
		return inUse, nil
	}
	if err != nil {
		return "", fmt.Errorf("slot %q: enable failover: %w", si.Name, err)
	}
	return fmt.Sprintf("enabled failover on replication slot %s (standbys with sync_replication_slots = on keep it across a promotion)", si.Name), nil
}

// RecreateSlot drops the slot, lost or not, and creates it again as
// EnsureSlot would, at the current WAL position. It returns the change line,
// the old slot's confirmed LSN (0 when there was none: changes after it may
// have been missed and need a backfill) and the new slot's LSN. A slot in use
// is refused with *SlotActiveError rather than taken from its holder.
func RecreateSlot(ctx context.Context, conn *pgx.Conn, name string) (line string, from, lsn pglogrepl.LSN, err error) {
	si, err := Slot(ctx, conn, name)
	var lost *SlotLostError
	switch {
	case err == nil || errors.As(err, &lost):
		if si.Active {
			return "", 0, 0, &SlotActiveError{Slot: name, Err: fmt.Errorf("active for PID %d", si.ActivePID)}
		}
		from = si.ConfirmedFlush
		if _, err := DropSlot(ctx, conn, name); err != nil {
			return "", 0, 0, err
		}
	case !errors.Is(err, ErrSlotMissing):
		return "", 0, 0, err
	}
	line, lsn, err = createSlot(ctx, conn, name)
	if err != nil {
		return "", 0, 0, err
	}
	if from != 0 {
		line = strings.Replace(line, "created", "recreated", 1) + fmt.Sprintf("; changes between %s and %s were not streamed", from, lsn)
	}
	return line, from, lsn, nil
}

// DropSlot drops the slot if it exists.
func DropSlot(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	tag, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
	if err != nil {
		return false, fmt.Errorf("drop slot %q: %w", name, err)
	}
	return tag.RowsAffected() > 0, nil
}

// DropPublication drops the publication if it exists.
func DropPublication(ctx context.Context, conn *pgx.Conn, name string) error {
	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %q: %w", name, err)
	}
	return nil
}

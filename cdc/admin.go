package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

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

// publishOptions are the publication's settings: row changes only, and a
// partition's changes under the partitioned table that was published (so a
// mapped partitioned table produces changes under its own name, and
// pg_publication_tables lists it rather than its partitions).
const publishOptions = "publish = 'insert, update, delete', publish_via_partition_root = true"

// Querier is a *pgx.Conn or a pgx.Tx.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// EnsurePublication creates the publication for tables or brings its table list
// in line, publishing inserts, updates and deletes only, partitions via their
// root. It returns what it changed; nothing when the publication is already
// right. conn may be a transaction: publications are transactional.
func EnsurePublication(ctx context.Context, conn Querier, name string, tables []string) ([]string, error) {
	want := slices.Clone(tables)
	slices.Sort(want)
	want = slices.Compact(want)
	list := make([]string, len(want))
	for i, t := range want {
		list[i] = quoteQualified(t)
	}
	pub := pgx.Identifier{name}.Sanitize()

	var pubdelete, pubtruncate, pubviaroot bool
	err := conn.QueryRow(ctx, `SELECT pubdelete, pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1`, name).
		Scan(&pubdelete, &pubtruncate, &pubviaroot)
	if errors.Is(err, pgx.ErrNoRows) {
		sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (%s)", pub, strings.Join(list, ", "), publishOptions)
		if _, err := conn.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("create publication %q: %w", name, err)
		}
		return []string{fmt.Sprintf("created publication %s for %s", name, strings.Join(want, ", "))}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", name, err)
	}
	var changes []string
	if !pubdelete || pubtruncate || !pubviaroot {
		// Before reading its tables: with publish_via_partition_root,
		// pg_publication_tables lists a partitioned table, not its partitions.
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET (%s)", pub, publishOptions)); err != nil {
			return nil, fmt.Errorf("alter publication %q: %w", name, err)
		}
		changes = append(changes, "publication "+name+" publishes insert, update, delete, partitions via their partitioned table")
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

// SlotInfo is what pg_replication_slots says of a slot.
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
}

// Slot reads the slot's state; ErrSlotMissing when there is none.
func Slot(ctx context.Context, conn *pgx.Conn, name string) (SlotInfo, error) {
	var si SlotInfo
	var confirmed, restart *string
	var pid *int32
	err := conn.QueryRow(ctx, `SELECT slot_name, coalesce(plugin, ''), coalesce(database, ''), active, active_pid,
			confirmed_flush_lsn::text, restart_lsn::text,
			coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, name).
		Scan(&si.Name, &si.Plugin, &si.Database, &si.Active, &pid, &confirmed, &restart, &si.RetainedBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return si, fmt.Errorf("slot %q: %w", name, ErrSlotMissing)
	}
	if err != nil {
		return si, fmt.Errorf("read slot %q: %w", name, err)
	}
	if pid != nil {
		si.ActivePID = *pid
	}
	if confirmed != nil {
		if si.ConfirmedFlush, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return si, fmt.Errorf("slot %q: confirmed_flush_lsn: %w", name, err)
		}
	}
	if restart != nil {
		if si.RestartLSN, err = pglogrepl.ParseLSN(*restart); err != nil {
			return si, fmt.Errorf("slot %q: restart_lsn: %w", name, err)
		}
	}
	return si, nil
}

// EnsureSlot creates the logical slot with pgoutput unless it exists. It
// returns whether it created it and the slot's confirmed LSN.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, name string) (bool, pglogrepl.LSN, error) {
	si, err := Slot(ctx, conn, name)
	if err == nil {
		if si.Plugin != "pgoutput" {
			return false, 0, fmt.Errorf("slot %q uses plugin %q, want pgoutput: drop it or choose another --slot", name, si.Plugin)
		}
		return false, si.ConfirmedFlush, nil
	}
	if !errors.Is(err, ErrSlotMissing) {
		return false, 0, err
	}
	var lsn string
	if err := conn.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, name).Scan(&lsn); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55000" {
			return false, 0, fmt.Errorf("create slot %q: %w (is wal_level = logical? it needs a restart of PostgreSQL)", name, err)
		}
		return false, 0, fmt.Errorf("create slot %q: %w", name, err)
	}
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return false, 0, fmt.Errorf("create slot %q: %w", name, err)
	}
	return true, l, nil
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

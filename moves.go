package walhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/mapping"
)

// A row moved to another partition by an UPDATE (its partition key changed)
// reaches the stream as a DELETE from the old partition immediately followed
// by an INSERT into the new one, in the same transaction, both under the
// partitioned table's name (publish_via_partition_root; pgoutput has no
// marker for a move). movePairer turns such a pair back into the one update
// it was: on a mapped partitioned table, a delete is held back until the next
// message; when that is an insert into the same table whose key, less the
// partition key columns, equals the deleted row's, the two are routed as one
// update with the deleted row as its old row. Anything else routes the delete
// first, as it came. At most one delete is held, never past its transaction's
// commit, so order and acknowledgement are as without pairing.
//
// The key is the table's `key:`, else its primary key; a partitioned table's
// primary key includes the partition key, which a move changes, hence "less
// the partition key columns" (of every level). A key made only of partition
// key columns pairs nothing. An application's own DELETE and INSERT of the
// same key, one right after the other in one transaction, look the same and
// are delivered as one update too.
type movePairer struct {
	route func(ctx context.Context, txn work, ch *change.Change, sites []string) error
	// table returns a relation's mapping, nil for none (router.table).
	table func(rel *change.Relation) *mapping.Table
	// columns returns the columns by which a relation's deletes and inserts
	// pair, nil when they do not (not partitioned, or nothing to pair by).
	columns func(ctx context.Context, rel *change.Relation, t *mapping.Table) ([]string, error)
	// cols caches columns by relation id.
	cols map[uint32][]string

	pending *change.Change
	txn     work
	sites   []string
}

func newMovePairer(route func(context.Context, work, *change.Change, []string) error,
	table func(*change.Relation) *mapping.Table, db *pgxpool.Pool) *movePairer {
	return &movePairer{route: route, table: table, cols: map[uint32][]string{},
		columns: func(ctx context.Context, rel *change.Relation, t *mapping.Table) ([]string, error) {
			return pairColumns(ctx, db, rel, t)
		}}
}

// flush routes the held delete unless m is an insert that may pair with it.
// The consumer calls it first for every message.
func (p *movePairer) flush(ctx context.Context, m cdc.Message) error {
	if p.pending == nil {
		return nil
	}
	if m.Kind == cdc.KindChange && m.Change.Op == change.Insert && m.Change.Relation.ID == p.pending.Relation.ID {
		return nil // routeChange decides
	}
	return p.routePending(ctx)
}

func (p *movePairer) routePending(ctx context.Context) error {
	d, txn, sites := p.pending, p.txn, p.sites
	p.pending, p.txn, p.sites = nil, nil, nil
	return p.route(ctx, txn, d, sites)
}

// routeChange routes ch, pairing it with the held delete or holding it back
// when it is a delete that may pair.
func (p *movePairer) routeChange(ctx context.Context, txn work, ch *change.Change, sites []string) error {
	if d := p.pending; d != nil {
		// flush let only an insert into the same relation through.
		if up := p.pair(d, ch); up != nil {
			p.pending, p.txn, p.sites = nil, nil, nil
			return p.route(ctx, txn, up, sites)
		}
		if err := p.routePending(ctx); err != nil {
			return err
		}
	}
	if ch.Op == change.Delete && ch.Old != nil {
		cols, err := p.pairable(ctx, ch.Relation)
		if err != nil {
			return err
		}
		if cols != nil {
			p.pending, p.txn, p.sites = ch, txn, sites
			return nil
		}
	}
	return p.route(ctx, txn, ch, sites)
}

// pairable returns the columns by which ch's relation pairs, nil for none.
func (p *movePairer) pairable(ctx context.Context, rel *change.Relation) ([]string, error) {
	if cols, ok := p.cols[rel.ID]; ok {
		return cols, nil
	}
	t := p.table(rel)
	if t == nil {
		p.cols[rel.ID] = nil
		return nil, nil
	}
	cols, err := p.columns(ctx, rel, t)
	if err != nil {
		return nil, err
	}
	p.cols[rel.ID] = cols
	return cols, nil
}

// pair returns the update that delete d and insert ins make, or nil when
// they are not one row's move: another shape, or another key.
func (p *movePairer) pair(d, ins *change.Change) *change.Change {
	if !sameShape(d.Relation, ins.Relation) {
		return nil
	}
	cols := p.cols[d.Relation.ID]
	if len(cols) == 0 {
		return nil
	}
	for _, name := range cols {
		i := ins.Relation.ColumnIndex(name)
		if i < 0 || i >= len(d.Old) || i >= len(ins.New) {
			return nil
		}
		o, n := d.Old[i], ins.New[i]
		if o.Kind != change.Text || n.Kind != change.Text || !bytes.Equal(o.Text, n.Text) {
			return nil
		}
	}
	// The delete's position: the update is where the row left its
	// partition, and its event id is as deterministic as either.
	return &change.Change{Relation: ins.Relation, Op: change.Update, Old: d.Old, New: ins.New, Tx: ins.Tx, Seq: d.Seq}
}

// sameShape says whether a and b have the same columns, so a row of one
// reads as a row of the other (pgoutput may send the relation again between
// the delete and the insert).
func sameShape(a, b *change.Relation) bool {
	return a == b || slices.EqualFunc(a.Columns, b.Columns, func(x, y change.Column) bool {
		return x.Name == y.Name && x.TypeOID == y.TypeOID
	})
}

// pairColumns reads from the catalog the columns by which rel's deletes and
// inserts pair: none unless rel is a partitioned table; else t's key less
// its partition key columns (pairKey).
func pairColumns(ctx context.Context, db *pgxpool.Pool, rel *change.Relation, t *mapping.Table) ([]string, error) {
	partitioned, pk, partKey, err := partitionInfo(ctx, db, rel.ID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil // dropped since: nothing to pair by
	}
	if err != nil {
		return nil, fmt.Errorf("read partition key of %s: %w", rel.QualifiedName(), err)
	}
	if !partitioned {
		return nil, nil
	}
	return pairKey(t.Config.Key, pk, partKey), nil
}

// rowQuerier is *pgx.Conn or *pgxpool.Pool.
type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// partitionInfo reads whether the relation oid is a partitioned table, its
// primary key columns, and the partition key columns of every level of its
// tree (partition keys on expressions count none of their columns).
// pgx.ErrNoRows when there is no such relation.
func partitionInfo(ctx context.Context, q rowQuerier, oid uint32) (partitioned bool, pk, partKey []string, err error) {
	err = q.QueryRow(ctx, `
		SELECT c.relkind = 'p',
			ARRAY(SELECT a.attname::text FROM pg_index i
				JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
				WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY a.attnum),
			ARRAY(SELECT DISTINCT a.attname::text FROM pg_partition_tree(c.oid) pt
				JOIN pg_partitioned_table p ON p.partrelid = pt.relid
				JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = ANY(p.partattrs::int2[]))
		FROM pg_class c WHERE c.oid = $1`, oid).Scan(&partitioned, &pk, &partKey)
	return partitioned, pk, partKey, err
}

// pairKey returns the columns by which a partitioned table's deletes and
// inserts pair: its key (`key:`, else the primary key pk) less the partition
// key columns, which a move changes (a partitioned table's primary key
// includes them). nil when nothing is left: such a table's moves are not
// paired. A move that changes a key column used in a partition key
// expression changes the pairing key, and is not paired either.
func pairKey(key, pk, partKey []string) []string {
	if len(key) == 0 {
		key = pk
	}
	var cols []string
	for _, k := range key {
		if !slices.Contains(partKey, k) {
			cols = append(cols, k)
		}
	}
	return cols
}

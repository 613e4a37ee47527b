package walhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapping"
)

// Replica identity for partitioned and keyless tables.
//
// A partitioned table is published via its root (the publication has
// publish_via_partition_root), so its changes arrive under its own name.
// PostgreSQL sends a partition's old rows marked with the root's replica
// identity but filled with what the partition logged, and replica identity
// is per table: install sets FULL on the root and on every partition, so that
// old rows are whole (a row moved to another partition arrives as a delete
// and an insert, which the consumer pairs into one update with the old row),
// and creates an event trigger that does the same for partitions created or
// attached later (walhook._partition_identity, migration 0040). Creating an
// event trigger needs a superuser; without one, install says that partitions
// added later need install again, and refuses a partitioned table without a
// primary key, whose new partitions would break the application's writes.
// Each identity it changes is recorded for uninstall, as ensureIdentity does.
//
// A table mapped with `key:` and no primary key has no replica identity, and
// once published PostgreSQL refuses the application's UPDATE and DELETE on
// it; identityNeeds lists it for FULL. When a unique, non-partial, immediate
// index on exactly the key columns, all NOT NULL, exists and is all the
// table needs (its rules read no other column of deleted rows), install
// makes that index the replica identity instead: deletes carry the key at
// less WAL than FULL.

// partitionTrigger is the event trigger install creates on
// walhook._partition_identity().
const partitionTrigger = "walhook_partition_identity"

// identityFix is a relation of a mapped partitioned table that lacks
// REPLICA IDENTITY FULL.
type identityFix struct {
	mapped   string // the mapped table
	rel      string // the relation to alter, quoted: the table or a partition
	relName  string // rel unquoted, for messages and the record
	original string // its relreplident: d, n or i
	index    string // its replica identity index, for i
}

// partitionPlan is what install must do for the mapped partitioned tables.
type partitionPlan struct {
	fixes []identityFix
	// partitioned are the mapped partitioned tables; keyless those of them
	// without a primary key.
	partitioned, keyless []string
}

// planPartitions reads the catalog for the mapped partitioned tables and
// the relations of theirs that lack REPLICA IDENTITY FULL.
func planPartitions(ctx context.Context, q cdc.Querier, tables []*mapping.TableConfig) (partitionPlan, error) {
	var p partitionPlan
	for _, t := range tables {
		var partitioned, hasPK bool
		err := q.QueryRow(ctx, `SELECT c.relkind = 'p', EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
			FROM pg_class c WHERE c.oid = to_regclass($1)`, quoteTable(t.Table)).Scan(&partitioned, &hasPK)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && !partitioned {
			continue // CheckCatalog names a missing table
		}
		if err != nil {
			return p, fmt.Errorf("read %s: %w", t.Table, err)
		}
		p.partitioned = append(p.partitioned, t.Table)
		if !hasPK {
			p.keyless = append(p.keyless, t.Table)
		}
		fixes, err := partitionFixes(ctx, q, t.Table)
		if err != nil {
			return p, err
		}
		p.fixes = append(p.fixes, fixes...)
	}
	return p, nil
}

// partitionFixes lists table and those of its partitions, at every level,
// that lack REPLICA IDENTITY FULL, the root first. Foreign partitions are
// left out: PostgreSQL publishes nothing of them.
func partitionFixes(ctx context.Context, q cdc.Querier, table string) ([]identityFix, error) {
	// The tree is walked in SQL over pg_inherits, not with
	// pg_partition_tree(): that function reads the catalog in a snapshot of
	// its own, newer than the statement's, so a partition attached (and
	// given FULL by the event trigger) meanwhile would show as attached
	// with the identity it had before, a drift that never was.
	rows, err := q.Query(ctx, `
		WITH RECURSIVE t(relid, level) AS (
			SELECT to_regclass($1)::oid, 0
			UNION ALL
			SELECT i.inhrelid, t.level + 1 FROM pg_inherits i JOIN t ON i.inhparent = t.relid)
		SELECT n.nspname, c.relname, c.relreplident::text,
			coalesce((SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
				WHERE i.indrelid = c.oid AND i.indisreplident), '')
		FROM t
		JOIN pg_class c ON c.oid = t.relid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
		ORDER BY t.level, 1, 2`, quoteTable(table))
	if err != nil {
		return nil, fmt.Errorf("read partitions of %s: %w", table, err)
	}
	var out []identityFix
	var schema, name, ident, index string
	_, err = pgx.ForEachRow(rows, []any{&schema, &name, &ident, &index}, func() error {
		out = append(out, identityFix{mapped: table, rel: pgx.Identifier{schema, name}.Sanitize(),
			relName: schema + "." + name, original: ident, index: index})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read partitions of %s: %w", table, err)
	}
	return out, nil
}

// keyIndex returns the name of an index of table that can be its replica
// identity and covers exactly the key columns: unique, immediate, valid,
// without a predicate, expressions or included columns, on NOT NULL columns.
// "" when there is none.
func keyIndex(ctx context.Context, q cdc.Querier, table string, key []string) (string, error) {
	var name string
	err := q.QueryRow(ctx, `
		SELECT ic.relname
		FROM pg_index i
		JOIN pg_class ic ON ic.oid = i.indexrelid
		WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate AND i.indisvalid
			AND i.indpred IS NULL AND i.indexprs IS NULL
			AND i.indnatts = cardinality($2::text[]) AND i.indnkeyatts = i.indnatts
			AND ARRAY(SELECT a.attname::text FROM pg_attribute a
				WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) AND a.attnotnull) @> $2::text[]
		ORDER BY ic.relname
		LIMIT 1`, quoteTable(table), key).Scan(&name)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read indexes of %s: %w", table, err)
	}
	return name, nil
}

// ensureTableIdentity runs in install's transaction, before the tables are
// published: it gives the mapped partitioned tables and their partitions
// REPLICA IDENTITY FULL, and a keyless table in needs its key index when
// that is all it needs. It returns what it changed and the needs left for
// ensureIdentity. It refuses a partitioned table without a primary key when
// it cannot create the event trigger that covers later partitions.
func ensureTableIdentity(ctx context.Context, tx pgx.Tx, cfg *mapping.Config, needs []identityNeed) ([]string, []identityNeed, error) {
	p, err := planPartitions(ctx, tx, cfg.Tables)
	if err != nil {
		return nil, nil, err
	}
	var changes identityChanges
	handled := map[string]bool{}
	if len(p.partitioned) > 0 {
		trigger, err := changes.ensurePartitionTrigger(ctx, tx)
		if err != nil {
			return nil, nil, err
		}
		if !trigger && len(p.keyless) > 0 {
			return nil, nil, fmt.Errorf("cannot map %s: a partitioned table without a primary key needs every partition, "+
				"also those created or attached later, to have a replica identity, or the application's UPDATE and DELETE on "+
				"them fail; install sets it with an event trigger, which only a superuser can create: run walhook install "+
				"as a superuser once, or give the table a primary key", strings.Join(p.keyless, ", "))
		}
		for _, table := range p.partitioned {
			handled[table] = true
			var names []string
			for _, f := range p.fixes {
				if f.mapped != table {
					continue
				}
				if _, err := tx.Exec(ctx, "ALTER TABLE "+f.rel+" REPLICA IDENTITY FULL"); err != nil {
					return nil, nil, fmt.Errorf("set replica identity of %s: %w", f.relName, err)
				}
				if err := recordIdentity(ctx, tx, f.relName, f.original, f.index); err != nil {
					return nil, nil, err
				}
				names = append(names, f.relName)
			}
			if len(names) == 0 {
				continue
			}
			line := fmt.Sprintf("set REPLICA IDENTITY FULL on partitioned table %s: %s (walhook uninstall restores them): its "+
				"changes are published under its name with whole old rows, also of rows moved to another partition",
				table, strings.Join(names, ", "))
			if !trigger {
				line += "; partitions created or attached later need walhook install again (the event trigger that " +
					"would set it needs a superuser)"
			}
			changes = append(changes, line)
		}
	}
	ic, err := keyIndexIdentity(ctx, tx, cfg, needs, handled)
	if err != nil {
		return nil, nil, err
	}
	changes = append(changes, ic...)
	return changes, slices.DeleteFunc(slices.Clone(needs), func(n identityNeed) bool { return handled[n.table] }), nil
}

// keyIndexIdentity gives each keyless table of needs (no replica identity,
// mapped with key:) its key index as replica identity, when there is one and
// identityNeeds, asked again, then needs nothing more for it; it marks those
// tables handled. A table that needs more keeps its need for FULL.
func keyIndexIdentity(ctx context.Context, tx pgx.Tx, cfg *mapping.Config, needs []identityNeed, handled map[string]bool) ([]string, error) {
	var changes []string
	var mapper *mapping.Mapper
	var rules *acl.Rules
	for _, n := range needs {
		t := tableConfig(cfg, n.table)
		if handled[n.table] || t == nil || len(t.Key) == 0 || n.original == "i" {
			continue
		}
		var hasPK bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = to_regclass($1) AND indisprimary)`,
			quoteTable(n.table)).Scan(&hasPK); err != nil {
			return nil, fmt.Errorf("read primary key of %s: %w", n.table, err)
		}
		if hasPK && n.original == "d" {
			continue // it has an identity: only a rule's needs listed it
		}
		idx, err := keyIndex(ctx, tx, n.table, t.Key)
		if err != nil {
			return nil, err
		}
		if idx == "" {
			continue // FULL, by ensureIdentity
		}
		if rules == nil {
			if mapper, rules, err = compileConfig(cfg); err != nil {
				return nil, err
			}
		}
		sp, err := tx.Begin(ctx)
		if err != nil {
			return nil, fmt.Errorf("savepoint: %w", err)
		}
		if _, err := sp.Exec(ctx, "ALTER TABLE "+quoteTable(n.table)+" REPLICA IDENTITY USING INDEX "+pgx.Identifier{idx}.Sanitize()); err != nil {
			return nil, fmt.Errorf("set replica identity of %s: %w", n.table, err)
		}
		again, err := identityNeeds(ctx, tx.Conn(), cfg, mapper, rules, references(mapper, rules))
		if err != nil {
			return nil, err
		}
		if slices.ContainsFunc(again, func(a identityNeed) bool { return a.table == n.table }) {
			if err := sp.Rollback(ctx); err != nil {
				return nil, fmt.Errorf("roll back to savepoint: %w", err)
			}
			continue
		}
		if err := sp.Commit(ctx); err != nil {
			return nil, fmt.Errorf("release savepoint: %w", err)
		}
		handled[n.table] = true
		changes = append(changes, fmt.Sprintf("set REPLICA IDENTITY USING INDEX %s on %s: it has no primary key, and without "+
			"a replica identity PostgreSQL would refuse the application's UPDATE and DELETE once it is published; "+
			"deletes carry the key %s", idx, n.table, strings.Join(t.Key, ", ")))
	}
	return changes, nil
}

// tableConfig returns cfg's mapping of table, or nil.
func tableConfig(cfg *mapping.Config, table string) *mapping.TableConfig {
	for _, t := range cfg.Tables {
		if t.Table == table {
			return t
		}
	}
	return nil
}

// recordIdentity records rel's replica identity before install set FULL,
// for uninstall to restore, unless one is recorded already.
func recordIdentity(ctx context.Context, tx pgx.Tx, rel, original, index string) error {
	rec, err := json.Marshal(recordedIdentity{Original: identityNames[original], Index: index, ChangedAt: time.Now().UTC()})
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO walhook.settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`,
		identitySetting+rel, string(rec)); err != nil {
		return fmt.Errorf("record replica identity of %s: %w", rel, err)
	}
	return nil
}

// ensurePartitionTrigger creates the event trigger that passes a partitioned
// table's REPLICA IDENTITY FULL on to partitions created or attached later,
// unless it exists. ok is false when it does not exist and cannot be created
// (only a superuser can create an event trigger). The trigger's function runs
// as its owner, who must be able to alter any partition: a superuser. It is
// owned by whoever applied migration 0040, so a superuser creating the
// trigger takes it over.
func (changes *identityChanges) ensurePartitionTrigger(ctx context.Context, q cdc.Querier) (ok bool, err error) {
	var exists, super, ownerSuper bool
	err = q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1),
		(SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
		coalesce((SELECT r.rolsuper FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
			WHERE p.oid = to_regprocedure('walhook._partition_identity()')), false)`, partitionTrigger).Scan(&exists, &super, &ownerSuper)
	if err != nil {
		return false, fmt.Errorf("read event trigger %s: %w", partitionTrigger, err)
	}
	if !super {
		return exists, nil
	}
	if !ownerSuper {
		if _, err := q.Exec(ctx, `ALTER FUNCTION walhook._partition_identity() OWNER TO CURRENT_USER`); err != nil {
			return false, fmt.Errorf("own walhook._partition_identity(): %w", err)
		}
		*changes = append(*changes, "walhook._partition_identity() now runs as a superuser, so that it can alter every partition")
	}
	if exists {
		return true, nil
	}
	_, err = q.Exec(ctx, `CREATE EVENT TRIGGER `+partitionTrigger+` ON ddl_command_end
		WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE') EXECUTE FUNCTION walhook._partition_identity()`)
	if err != nil {
		return false, fmt.Errorf("create event trigger %s: %w", partitionTrigger, err)
	}
	*changes = append(*changes, fmt.Sprintf("created event trigger %s: partitions created or attached later "+
		"get REPLICA IDENTITY FULL from their partitioned table", partitionTrigger))
	return true, nil
}

// identityChanges are the lines ensureTableIdentity returns.
type identityChanges []string

// identityDrift lists, for `check` and `run`, the relations of mapped
// partitioned tables that lack the REPLICA IDENTITY FULL install gives them:
// partitions added without the event trigger, or tables installed by an
// older walhook.
func identityDrift(ctx context.Context, q cdc.Querier, tables []*mapping.TableConfig) ([]string, error) {
	p, err := planPartitions(ctx, q, tables)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range p.fixes {
		if f.relName == f.mapped {
			out = append(out, "REPLICA IDENTITY FULL on partitioned table "+f.relName)
		} else {
			out = append(out, fmt.Sprintf("REPLICA IDENTITY FULL on %s (a partition of %s)", f.relName, f.mapped))
		}
	}
	return out, nil
}

// checkPartitionMapping refuses a config that maps a partition and also one
// of its ancestors: the publication sends the partition's changes under the
// ancestor's name, so the partition's own mapping would never apply.
func checkPartitionMapping(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) error {
	mapped := map[string]bool{}
	for _, t := range cfg.Tables {
		mapped[t.Table] = true
	}
	var errs mapping.Errors
	for i, t := range cfg.Tables {
		rows, err := conn.Query(ctx, `
			SELECT n.nspname || '.' || c.relname
			FROM pg_partition_ancestors(to_regclass($1)) a
			JOIN pg_class c ON c.oid = a.relid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE a.relid <> to_regclass($1)`, quoteTable(t.Table))
		if err != nil {
			return fmt.Errorf("read partition ancestors of %s: %w", t.Table, err)
		}
		ancestors, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("read partition ancestors of %s: %w", t.Table, err)
		}
		for _, a := range ancestors {
			if mapped[a] {
				errs = append(errs, mapping.ConfigError{File: cfg.File, Line: t.Line, Field: fmt.Sprintf("tables[%d].table", i),
					Problem: fmt.Sprintf("%s is a partition of %s, which is also mapped: its changes arrive as %s's "+
						"(the publication publishes partitions via their root); map only one of them", t.Table, a, a)})
				break
			}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// mappedConfigs returns the table configs of mapper's tables.
func mappedConfigs(mapper *mapping.Mapper) []*mapping.TableConfig {
	var out []*mapping.TableConfig
	for _, name := range mapper.Tables() {
		out = append(out, mapper.Table(name).Config)
	}
	return out
}

// PartitionNotes says, for `walhook check`, how each mapped partitioned table
// is delivered: under its own name, with moves between partitions as one
// update when its key leaves something to match them by.
func PartitionNotes(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) ([]string, error) {
	var out []string
	for _, t := range cfg.Tables {
		var oid uint32
		if err := conn.QueryRow(ctx, `SELECT coalesce(to_regclass($1)::oid, 0)`, quoteTable(t.Table)).Scan(&oid); err != nil {
			return nil, fmt.Errorf("read %s: %w", t.Table, err)
		}
		if oid == 0 {
			continue
		}
		partitioned, pk, partKey, err := partitionInfo(ctx, conn, oid)
		if err != nil {
			return nil, fmt.Errorf("read partition key of %s: %w", t.Table, err)
		}
		if !partitioned {
			continue
		}
		line := fmt.Sprintf("%s:%d: %s is partitioned: changes to its partitions, also ones added later, arrive as its own "+
			"(published via the root); ", cfg.File, t.Line, t.Table)
		if cols := pairKey(t.Key, pk, partKey); len(cols) > 0 {
			line += "a row moved to another partition arrives as one update, matched by " + strings.Join(cols, ", ")
		} else {
			line += "a row moved to another partition arrives as a delete and a create, since its key is made of partition " +
				"key columns only; set key: to the columns that identify a row across partitions to receive one update"
		}
		out = append(out, line)
	}
	return out, nil
}

// DropPartitionTrigger drops the event trigger install creates for mapped
// partitioned tables, for `walhook uninstall`. It returns what it did: a line
// when it dropped it, a warning when it exists and this role may not drop it
// (only its owner, a superuser, may), nothing when there is none.
func DropPartitionTrigger(ctx context.Context, conn *pgx.Conn) (string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1)`, partitionTrigger).Scan(&exists); err != nil {
		return "", fmt.Errorf("read event trigger %s: %w", partitionTrigger, err)
	}
	if !exists {
		return "", nil
	}
	_, err := conn.Exec(ctx, `DROP EVENT TRIGGER IF EXISTS `+partitionTrigger)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return fmt.Sprintf("warning: event trigger %s is left in place: only a superuser can drop it", partitionTrigger), nil
	}
	if err != nil {
		return "", fmt.Errorf("drop event trigger %s: %w", partitionTrigger, err)
	}
	return "dropped event trigger " + partitionTrigger, nil
}

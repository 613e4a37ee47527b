package walhook

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/mapping"
)

// Replica identity for partitioned and keyless tables.
//
// A published table needs a replica identity, or PostgreSQL refuses the
// application's own UPDATE and DELETE on it ("does not have a replica
// identity and publishes updates"). A table mapped with `key:` and no
// primary key has none until install gives it one: REPLICA IDENTITY USING
// INDEX of a unique, non-partial, immediate index on exactly the key columns,
// all NOT NULL, when there is one, else FULL.
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

// partitionTrigger is the event trigger install creates on
// walhook._partition_identity().
const partitionTrigger = "walhook_partition_identity"

// identityFix is one ALTER TABLE ... REPLICA IDENTITY install makes.
type identityFix struct {
	mapped  string // the mapped table
	rel     string // the relation to alter, quoted: the table or a partition
	relName string // rel unquoted, for messages
	index   string // the index of USING INDEX
	// partitioned says the mapped table is partitioned: rel is it or one
	// of its partitions.
	partitioned bool
}

func (f identityFix) sql() string {
	if f.index != "" {
		return "ALTER TABLE " + f.rel + " REPLICA IDENTITY USING INDEX " + pgx.Identifier{f.index}.Sanitize()
	}
	return "ALTER TABLE " + f.rel + " REPLICA IDENTITY FULL"
}

// what says what f sets, for messages: "FULL" or "USING INDEX name".
func (f identityFix) what() string {
	if f.index != "" {
		return "USING INDEX " + f.index
	}
	return "FULL"
}

// identityPlan is what install must do for the mapped partitioned and keyless
// tables.
type identityPlan struct {
	fixes []identityFix
	// partitioned are the mapped partitioned tables; keylessPartitioned
	// those of them without a primary key.
	partitioned, keylessPartitioned []string
}

// planTableIdentity reads the catalog for the replica identities the mapped
// partitioned and keyless tables lack.
func planTableIdentity(ctx context.Context, conn *pgx.Conn, tables []*mapping.TableConfig) (identityPlan, error) {
	var p identityPlan
	for _, t := range tables {
		var kind, ident string
		var hasPK, hasIdent bool
		err := conn.QueryRow(ctx, `
			SELECT c.relkind::text, c.relreplident::text,
				EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
				EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND
					CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END)
			FROM pg_class c WHERE c.oid = to_regclass($1)`, quoteTable(t.Table)).Scan(&kind, &ident, &hasPK, &hasIdent)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // CheckCatalog names it
		}
		if err != nil {
			return p, fmt.Errorf("read replica identity of %s: %w", t.Table, err)
		}
		if kind == "p" {
			p.partitioned = append(p.partitioned, t.Table)
			if !hasPK {
				p.keylessPartitioned = append(p.keylessPartitioned, t.Table)
			}
			fixes, err := partitionFixes(ctx, conn, t.Table)
			if err != nil {
				return p, err
			}
			p.fixes = append(p.fixes, fixes...)
			continue
		}
		if len(t.Key) == 0 || ident == "f" || hasIdent {
			// Without key:, CheckCatalog required a primary key.
			continue
		}
		idx, err := keyIndex(ctx, conn, t.Table, t.Key)
		if err != nil {
			return p, err
		}
		p.fixes = append(p.fixes, identityFix{mapped: t.Table, rel: quoteTable(t.Table), relName: t.Table, index: idx})
	}
	return p, nil
}

// partitionFixes lists table and those of its partitions, at every level,
// that lack REPLICA IDENTITY FULL, the root first. Foreign partitions are
// left out: PostgreSQL publishes nothing of them.
func partitionFixes(ctx context.Context, conn *pgx.Conn, table string) ([]identityFix, error) {
	rows, err := conn.Query(ctx, `
		SELECT n.nspname, c.relname
		FROM pg_partition_tree(to_regclass($1)) t
		JOIN pg_class c ON c.oid = t.relid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
		ORDER BY t.level, 1, 2`, quoteTable(table))
	if err != nil {
		return nil, fmt.Errorf("read partitions of %s: %w", table, err)
	}
	var out []identityFix
	var schema, name string
	_, err = pgx.ForEachRow(rows, []any{&schema, &name}, func() error {
		out = append(out, identityFix{mapped: table, rel: pgx.Identifier{schema, name}.Sanitize(),
			relName: schema + "." + name, partitioned: true})
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
func keyIndex(ctx context.Context, conn *pgx.Conn, table string, key []string) (string, error) {
	var name string
	err := conn.QueryRow(ctx, `
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

// ensureTableIdentity gives the mapped partitioned and keyless tables the
// replica identity they lack, before they are published, and returns one line
// per table it changed. It refuses a partitioned table without a primary key
// when it cannot create the event trigger that covers later partitions.
func ensureTableIdentity(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) ([]string, error) {
	p, err := planTableIdentity(ctx, conn, cfg.Tables)
	if err != nil {
		return nil, err
	}
	var changes identityChanges
	trigger := false
	if len(p.partitioned) > 0 {
		ok, err := changes.ensurePartitionTrigger(ctx, conn)
		if err != nil {
			return nil, err
		}
		if !ok && len(p.keylessPartitioned) > 0 {
			return nil, fmt.Errorf("cannot map %s: a partitioned table without a primary key needs every partition, "+
				"also those created or attached later, to have a replica identity, or the application's UPDATE and DELETE on "+
				"them fail; install sets it with an event trigger, which only a superuser can create: run walhook install "+
				"as a superuser once, or give the table a primary key", strings.Join(p.keylessPartitioned, ", "))
		}
		trigger = ok
	}
	byTable := map[string][]identityFix{}
	var order []string
	for _, f := range p.fixes {
		if _, seen := byTable[f.mapped]; !seen {
			order = append(order, f.mapped)
		}
		byTable[f.mapped] = append(byTable[f.mapped], f)
	}
	for _, table := range order {
		fixes := byTable[table]
		var names []string
		for _, f := range fixes {
			if _, err := conn.Exec(ctx, f.sql()); err != nil {
				return nil, fmt.Errorf("set replica identity of %s: %w", f.relName, err)
			}
			names = append(names, f.relName)
		}
		changes = append(changes, identityLine(fixes, names, trigger))
	}
	return changes, nil
}

// identityLine says what ensureTableIdentity did for one mapped table.
func identityLine(fixes []identityFix, names []string, trigger bool) string {
	f := fixes[0]
	if f.partitioned {
		line := fmt.Sprintf("set REPLICA IDENTITY FULL on partitioned table %s: %s: its changes are published under "+
			"its name with whole old rows, also of rows moved to another partition",
			f.mapped, strings.Join(names, ", "))
		if !trigger {
			line += "; partitions created or attached later need walhook install again (the event trigger that " +
				"would set it needs a superuser)"
		}
		return line
	}
	if f.index == "" {
		return fmt.Sprintf("set REPLICA IDENTITY FULL on %s: it has no primary key and no unique index on its key "+
			"columns (all NOT NULL, no predicate), and without a replica identity the application's UPDATE and DELETE "+
			"would fail once it is published; deletes now carry the whole old row", f.mapped)
	}
	return fmt.Sprintf("set REPLICA IDENTITY %s on %s: it has no primary key, and without a replica identity the "+
		"application's UPDATE and DELETE would fail once it is published; deletes now carry the key", f.what(), f.mapped)
}

// ensurePartitionTrigger creates the event trigger that passes a partitioned
// table's REPLICA IDENTITY FULL on to partitions created or attached later,
// unless it exists. ok is false when it does not exist and cannot be created
// (only a superuser can create an event trigger). The trigger's function runs
// as its owner, who must be able to alter any partition: a superuser. It is
// owned by whoever applied migration 0040, so a superuser creating the
// trigger takes it over.
func (changes *identityChanges) ensurePartitionTrigger(ctx context.Context, conn *pgx.Conn) (ok bool, err error) {
	var exists, super, ownerSuper bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1),
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
		if _, err := conn.Exec(ctx, `ALTER FUNCTION walhook._partition_identity() OWNER TO CURRENT_USER`); err != nil {
			return false, fmt.Errorf("own walhook._partition_identity(): %w", err)
		}
		*changes = append(*changes, "walhook._partition_identity() now runs as a superuser, so that it can alter every partition")
	}
	if exists {
		return true, nil
	}
	_, err = conn.Exec(ctx, `CREATE EVENT TRIGGER `+partitionTrigger+` ON ddl_command_end
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

// identityDrift lists, for `check` and `run`, the replica identities install
// would set on the mapped partitioned and keyless tables: partitions
// attached without the event trigger, or tables installed by an older
// walhook.
func identityDrift(ctx context.Context, conn *pgx.Conn, tables []*mapping.TableConfig) ([]string, error) {
	p, err := planTableIdentity(ctx, conn, tables)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, f := range p.fixes {
		switch {
		case f.partitioned && f.relName != f.mapped:
			out = append(out, fmt.Sprintf("REPLICA IDENTITY FULL on %s (a partition of %s)", f.relName, f.mapped))
		default:
			out = append(out, fmt.Sprintf("REPLICA IDENTITY %s on %s", f.what(), f.relName))
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

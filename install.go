package walhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
	"github.com/walhook/walhook/schema"
)

// InstallOptions says where and how to install.
type InstallOptions struct {
	// Slot and Publication default to cdc.DefaultSlot and
	// cdc.DefaultPublication.
	Slot        string
	Publication string
	// AllowHTTP is recorded so that walhook.subscribe() refuses http://
	// targets up front unless the service will send to them.
	AllowHTTP bool
	// RunRole, when set, is granted what `walhook run` needs (it must also
	// have REPLICATION).
	RunRole string
	// DryRun reports what Install would change and changes nothing.
	DryRun bool
	// RecreateSlot drops the slot, even one PostgreSQL invalidated, and
	// creates it anew at the current position; what was committed in between
	// is not streamed (backfill it).
	RecreateSlot bool
}

// Install brings the database in line with cfg: schema walhook and its
// migrations, the events and dialects the config offers, the publication,
// the replica identity the rules need, and the slot. It is idempotent and
// returns one readable line per change it made; none when all was in place.
// Lines starting "warning: " are Check's warnings.
//
// Nothing changes unless Check passes: a config mistake, wal_level, a slot
// of another database, missing privileges or no free slot are reported
// before the first change. The changes are then made in one transaction
// (a failure undoes them all), and the slot is created after its commit:
// PostgreSQL cannot create a logical slot in a transaction that has
// written. With DryRun that transaction is rolled back instead, and the
// slot is reported, not created; the lines then say what would change.
func Install(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config, opts InstallOptions) ([]string, error) {
	if opts.Slot == "" {
		opts.Slot = cdc.DefaultSlot
	}
	if opts.Publication == "" {
		opts.Publication = cdc.DefaultPublication
	}
	mapper, err := mapping.New(cfg)
	if err != nil {
		return nil, err
	}
	warnings, needs, err := check(ctx, conn, cfg, CheckOptions{Slot: opts.Slot})
	if err != nil {
		return nil, err
	}
	var changes []string
	for _, w := range warnings {
		changes = append(changes, "warning: "+w)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin install: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	tc, err := install(ctx, tx, opts, cfg, mapper, needs)
	if err != nil {
		return nil, err
	}
	changes = append(changes, tc...)
	if opts.RunRole != "" {
		gc, err := grantRunRole(ctx, tx, opts.RunRole, cfg)
		if err != nil {
			return nil, err
		}
		changes = append(changes, gc...)
	}
	if opts.DryRun {
		if err := tx.Rollback(ctx); err != nil {
			return nil, fmt.Errorf("roll back the dry run: %w", err)
		}
		if _, err := cdc.Slot(ctx, conn, opts.Slot); errors.Is(err, cdc.ErrSlotMissing) {
			changes = append(changes, fmt.Sprintf("created replication slot %s", opts.Slot))
		} else if err != nil {
			return nil, err
		}
		return changes, nil
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit install: %w", err)
	}
	var line string
	var lsn pglogrepl.LSN
	created := opts.RecreateSlot
	if opts.RecreateSlot {
		line, _, lsn, err = cdc.RecreateSlot(ctx, conn, opts.Slot)
	} else {
		_, serr := cdc.Slot(ctx, conn, opts.Slot)
		var lost *cdc.SlotLostError
		created = errors.Is(serr, cdc.ErrSlotMissing) && !errors.As(serr, &lost)
		line, lsn, err = cdc.EnsureSlot(ctx, conn, opts.Slot)
	}
	if err != nil {
		return nil, err
	}
	if line != "" {
		changes = append(changes, line)
	}
	if created {
		n, err := subs.Snapshot(ctx, conn, lsn)
		if err != nil {
			return nil, err
		}
		if err := snapshotOwners(ctx, conn, lsn); err != nil {
			return nil, err
		}
		if n > 0 {
			changes = append(changes, fmt.Sprintf("recorded %d existing subscription(s) for the new slot", n))
		}
	}
	if len(changes) > len(warnings) {
		// A running process learns of the install from the stream, in
		// commit order, and reloads or stops (see Config.Reload).
		if _, err := conn.Exec(ctx, `SELECT pg_logical_emit_message(true, $1, $2)`, cdc.InstallPrefix, configDigest(cfg, mapper)); err != nil {
			return nil, fmt.Errorf("announce the install: %w", err)
		}
	}
	return changes, nil
}

// configDigest sums what an install puts in the database from a config:
// events, tables, owners, dialects and static subscriptions. Two configs
// with the same digest need no reinstall between them.
func configDigest(cfg *mapping.Config, mapper *mapping.Mapper) string {
	h := sha256.New()
	for _, e := range mapper.Events() {
		fmt.Fprintf(h, "event %s %s %s %v\n", e.Name, e.Table, e.Op, e.Derived)
	}
	if o := cfg.Owners; o != nil {
		fmt.Fprintf(h, "owners %q %q\n", o.Query, o.Watch)
	}
	for _, d := range slices.Sorted(maps.Keys(cfg.Dialects)) {
		fmt.Fprintf(h, "dialect %s\n", d)
	}
	for _, st := range cfg.Subscriptions {
		fmt.Fprintf(h, "static %+v\n", *st)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// install brings the database in line with the config in tx: schema,
// events, dialects, settings, static subscriptions, publication and replica
// identity. It returns
// what it changed.
func install(ctx context.Context, tx pgx.Tx, c InstallOptions, cfg *mapping.Config, mapper *mapping.Mapper, needs []identityNeed) ([]string, error) {
	var events []schema.Event
	for _, e := range mapper.Events() {
		events = append(events, schema.Event{Name: e.Name, Table: e.Table, Operation: e.Op, Derived: e.Derived})
	}
	rep, err := schema.Install(ctx, tx, schema.Options{
		Events:   events,
		Dialects: slices.Sorted(maps.Keys(cfg.Dialects)),
		Settings: map[string]string{"allow_http": strconv.FormatBool(c.AllowHTTP), "config_digest": configDigest(cfg, mapper),
			"owners_query": ownersQuery(cfg)},
	})
	if err != nil {
		return nil, fmt.Errorf("install schema: %w", err)
	}
	changes := rep.Changes
	sc, err := schema.Reconcile(ctx, tx, cfg.Subscriptions)
	if err != nil {
		return nil, fmt.Errorf("reconcile static subscriptions: %w", err)
	}
	changes = append(changes, sc...)
	// Before publishing: a published table without a replica identity fails
	// the application's UPDATE and DELETE.
	tc, needs, err := ensureTableIdentity(ctx, tx, cfg, needs)
	if err != nil {
		return nil, err
	}
	changes = append(changes, tc...)
	pc, err := cdc.EnsurePublication(ctx, tx, c.Publication, publicationTables(cfg, mapper), mapper.Truncates())
	if err != nil {
		return nil, err
	}
	changes = append(changes, pc...)
	oc, err := ensureOwnerTriggers(ctx, tx, cfg)
	if err != nil {
		return nil, err
	}
	changes = append(changes, oc...)
	ic, err := ensureIdentity(ctx, tx, needs)
	if err != nil {
		return nil, err
	}
	return append(changes, ic...), nil
}

// publicationTables are the tables the publication covers: the mapped
// tables, walhook.subscriptions, and with an owners block the watched
// tables and walhook.owner_state.
func publicationTables(cfg *mapping.Config, mapper *mapping.Mapper) []string {
	tables := append(mapper.Tables(), cdc.SubscriptionsTable)
	if cfg.Owners != nil {
		tables = append(tables, cfg.Owners.Watch...)
		tables = append(tables, ownerStateTable)
	}
	return slices.Compact(slices.Sorted(slices.Values(tables)))
}

// ownersQuery is the owners.query the owner triggers run; "" for none.
func ownersQuery(cfg *mapping.Config) string {
	if cfg.Owners == nil {
		return ""
	}
	return cfg.Owners.Query
}

// ownerTriggerPrefix names the triggers install puts on watched tables.
const ownerTriggerPrefix = "walhook_owners_"

// ensureOwnerTriggers puts on each owners.watch table the statement
// triggers that write the affected owners' attributes to
// walhook.owner_state in the writer's transaction, removes them from tables
// no longer watched, and records the attributes of every subscribed owner
// that has none yet.
func ensureOwnerTriggers(ctx context.Context, tx pgx.Tx, cfg *mapping.Config) ([]string, error) {
	var changes []string
	rows, err := tx.Query(ctx, `SELECT DISTINCT n.nspname || '.' || c.relname, t.tgname, encode(t.tgargs, 'escape')
		FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE t.tgname LIKE $1 || '%' AND NOT t.tgisinternal`, ownerTriggerPrefix)
	if err != nil {
		return nil, fmt.Errorf("read owner triggers: %w", err)
	}
	type trig struct{ table, name, args string }
	var have []trig
	var tr trig
	if _, err := pgx.ForEachRow(rows, []any{&tr.table, &tr.name, &tr.args}, func() error {
		have = append(have, tr)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read owner triggers: %w", err)
	}
	var watch []string
	keys := map[string]string{}
	if o := cfg.Owners; o != nil {
		watch, keys = o.Watch, o.Keys
	}
	for _, t := range have {
		key, watched := keys[t.table], slices.Contains(watch, t.table)
		if watched && strings.TrimSuffix(t.args, "\\000") == key {
			continue
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("DROP TRIGGER %s ON %s", pgx.Identifier{t.name}.Sanitize(), quoteTable(t.table))); err != nil {
			return nil, fmt.Errorf("drop trigger %s on %s: %w", t.name, t.table, err)
		}
		if !watched {
			changes = append(changes, fmt.Sprintf("removed trigger %s from %s: it is no longer in owners.watch", t.name, t.table))
		}
	}
	for _, table := range watch {
		key := keys[table]
		for _, ev := range []struct{ name, on, ref string }{
			{"ins", "INSERT", "REFERENCING NEW TABLE AS new_rows"},
			{"upd", "UPDATE", "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"},
			{"del", "DELETE", "REFERENCING OLD TABLE AS old_rows"},
		} {
			name := ownerTriggerPrefix + ev.name
			if slices.ContainsFunc(have, func(t trig) bool {
				return t.table == table && t.name == name && strings.TrimSuffix(t.args, "\\000") == key
			}) {
				continue
			}
			if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TRIGGER %s AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION walhook._owners_changed(%s)",
				pgx.Identifier{name}.Sanitize(), ev.on, quoteTable(table), ev.ref, quoteLiteral(key))); err != nil {
				return nil, fmt.Errorf("create owner trigger on %s: %w", table, err)
			}
			if ev.name == "ins" {
				what := "every subscribed owner"
				if key != "" {
					what = "the owners in column " + key
				}
				changes = append(changes, fmt.Sprintf("added triggers on %s: its changes record the attributes of %s in walhook.owner_state", table, what))
			}
		}
	}
	if cfg.Owners != nil {
		// owners.query as a function of its own, so that each session plans
		// it once instead of on every write to a watched table. $1 in the
		// query is the function's ids; column names win over its OUT names.
		const tag = "$walhook_owners_query$"
		if strings.Contains(cfg.Owners.Query, tag) {
			return nil, fmt.Errorf("owners.query contains %s, which walhook uses to quote it", tag)
		}
		if _, err := tx.Exec(ctx, `CREATE OR REPLACE FUNCTION walhook._owners_attrs(ids text[]) RETURNS TABLE (owner text, attrs jsonb)
			LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public AS `+tag+`
			#variable_conflict use_column
			BEGIN
				RETURN QUERY SELECT r.id::text, to_jsonb(r) FROM (`+cfg.Owners.Query+`) r;
			END `+tag); err != nil {
			return nil, fmt.Errorf("define the owners query for the triggers: %w", err)
		}
		var n int
		// Owners without a state, and those whose last refresh failed (a
		// fixed owners.query takes effect here).
		if err := tx.QueryRow(ctx, `SELECT walhook._refresh_owners(array_agg(DISTINCT s.owner))
			FROM walhook.subscriptions s WHERE NOT EXISTS (SELECT 1 FROM walhook.owner_state o WHERE o.owner = s.owner AND o.error IS NULL)`).Scan(&n); err != nil {
			return nil, fmt.Errorf("record the attributes of subscribed owners: %w", err)
		}
		if n > 0 {
			changes = append(changes, fmt.Sprintf("recorded the attributes of %d subscribed owner(s) in walhook.owner_state", n))
		}
	}
	return changes, nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// identitySetting is the walhook.settings key under which install records a
// table's replica identity before it set FULL, for uninstall to restore.
const identitySetting = "replica_identity:"

// recordedIdentity is the value of an identitySetting.
type recordedIdentity struct {
	Original  string    `json:"original"`        // default, nothing or index
	Index     string    `json:"index,omitempty"` // for index: the index's name
	ChangedAt time.Time `json:"changed_at"`
}

var identityNames = map[string]string{"d": "default", "n": "nothing", "i": "index", "f": "full"}

// ensureIdentity sets REPLICA IDENTITY FULL on the tables of needs, records
// each one's original identity in walhook.settings (the first one, when
// install changed it before) and says so.
func ensureIdentity(ctx context.Context, tx pgx.Tx, needs []identityNeed) ([]string, error) {
	var changes []string
	for _, n := range needs {
		if _, err := tx.Exec(ctx, "ALTER TABLE "+quoteTable(n.table)+" REPLICA IDENTITY FULL"); err != nil {
			return nil, fmt.Errorf("set replica identity of %s: %w", n.table, err)
		}
		rec, err := json.Marshal(recordedIdentity{Original: identityNames[n.original], Index: n.index, ChangedAt: time.Now().UTC()})
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO walhook.settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`,
			identitySetting+n.table, string(rec)); err != nil {
			return nil, fmt.Errorf("record replica identity of %s: %w", n.table, err)
		}
		was := strings.ToUpper(identityNames[n.original])
		if n.original == "i" {
			was = "USING INDEX " + n.index
		}
		changes = append(changes, fmt.Sprintf("set REPLICA IDENTITY FULL on %s (was %s; walhook uninstall restores it): %s", n.table, was, n.why))
	}
	return changes, nil
}

func quoteTable(name string) string {
	s, t, _ := strings.Cut(name, ".")
	return pgx.Identifier{s, t}.Sanitize()
}

// grantRunRole gives role what walhook run needs beyond REPLICATION: the
// walhook tables, a row-level security policy that lets it see every
// subscription, and SELECT on the tables owners.query reads (the watched
// ones; a query reading others needs those granted by hand).
func grantRunRole(ctx context.Context, conn pgx.Tx, role string, cfg *mapping.Config) ([]string, error) {
	var repl bool
	err := conn.QueryRow(ctx, `SELECT rolreplication FROM pg_roles WHERE rolname = $1`, role).Scan(&repl)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("--run-role: role %q does not exist", role)
	}
	if err != nil {
		return nil, fmt.Errorf("read role %q: %w", role, err)
	}
	r := pgx.Identifier{role}.Sanitize()
	stmts := []string{
		"GRANT USAGE ON SCHEMA walhook TO " + r,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO " + r,
		"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA walhook TO " + r,
		// run reconciles the static subscriptions at start.
		"GRANT EXECUTE ON FUNCTION walhook._declare_static(text, text[], text, text, text, text, text) TO " + r,
	}
	for _, t := range []string{"subscriptions", "attempts", "backfills"} {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'walhook'
			AND tablename = $1 AND policyname = $2)`, t, "service_"+role).Scan(&exists); err != nil {
			return nil, fmt.Errorf("read policies: %w", err)
		}
		if !exists {
			stmts = append(stmts, fmt.Sprintf("CREATE POLICY %s ON walhook.%s TO %s USING (true) WITH CHECK (true)",
				pgx.Identifier{"service_" + role}.Sanitize(), t, r))
		}
	}
	if cfg.Owners != nil {
		for _, t := range cfg.Owners.Watch {
			s, n, _ := strings.Cut(t, ".")
			stmts = append(stmts, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", pgx.Identifier{s}.Sanitize(), r),
				fmt.Sprintf("GRANT SELECT ON %s TO %s", pgx.Identifier{s, n}.Sanitize(), r))
		}
	}
	// A backfill reads the mapped tables.
	for _, t := range cfg.Tables {
		s, n, _ := strings.Cut(t.Table, ".")
		stmts = append(stmts, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", pgx.Identifier{s}.Sanitize(), r),
			fmt.Sprintf("GRANT SELECT ON %s TO %s", pgx.Identifier{s, n}.Sanitize(), r))
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	out := []string{fmt.Sprintf("granted role %s what walhook run needs", role)}
	if !repl {
		out = append(out, fmt.Sprintf("warning: role %s lacks REPLICATION; run ALTER ROLE %s REPLICATION as a superuser", role, r))
	}
	return out, nil
}

// installMismatch is checkInstalled's verdict that the database does not
// match the config, as opposed to a failure to ask.
type installMismatch string

func (e installMismatch) Error() string { return string(e) }

// checkInstalled refuses to run with a config the database was not installed
// for: a mapped table missing from the publication would produce nothing,
// silently, and an event missing from walhook.events cannot be subscribed to.
//
// A mapped table that no longer exists (dropped, or renamed while walhook was
// stopped) is not refused: the other tables go on. It is returned as a
// warning, for the caller to log loudly.
func checkInstalled(ctx context.Context, dsn, publication string, mapper *mapping.Mapper) (warnings []string, err error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	v, err := schema.Version(ctx, conn)
	if err != nil {
		return nil, err
	}
	if v == 0 {
		return nil, installMismatch("walhook is not installed in this database: run walhook install with this config")
	}
	migs, err := schema.Migrations()
	if err != nil {
		return nil, err
	}
	if latest := migs[len(migs)-1].Version; v < latest {
		return nil, installMismatch(fmt.Sprintf("the installed schema is version %d and this walhook needs %d: run walhook install to upgrade it", v, latest))
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", publication, err)
	}
	var missing []string
	for _, t := range mapper.Tables() {
		if slices.Contains(published, t) {
			continue
		}
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, quoteTable(t)).Scan(&exists); err != nil {
			return nil, fmt.Errorf("look up %s: %w", t, err)
		}
		if !exists {
			warnings = append(warnings, fmt.Sprintf("mapped table %s does not exist (dropped, or renamed while walhook was stopped): "+
				"it produces no events until the config names the table as it is now", t))
			continue
		}
		missing = append(missing, t)
	}
	rows, err = conn.Query(ctx, `SELECT name FROM walhook.events`)
	if err != nil {
		return nil, fmt.Errorf("read walhook.events: %w", err)
	}
	events, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read walhook.events: %w", err)
	}
	for _, e := range mapper.Events() {
		if !slices.Contains(events, e.Name) {
			missing = append(missing, "event "+e.Name)
		}
	}
	drift, err := identityDrift(ctx, conn, mappedConfigs(mapper))
	if err != nil {
		return nil, err
	}
	missing = append(missing, drift...)
	if len(missing) > 0 {
		return nil, installMismatch(fmt.Sprintf("the config is newer than the installation (not installed: %s): run walhook install with this config first",
			strings.Join(missing, ", ")))
	}
	return warnings, nil
}

// CheckCatalog checks the config's tables and columns against the database;
// Check checks that and more.
func CheckCatalog(ctx context.Context, conn *pgx.Conn, cfg *mapping.Config) error {
	cat, err := readCatalog(ctx, conn, cfg)
	if err != nil {
		return err
	}
	if err := cfg.CheckCatalog(cat); err != nil {
		return err
	}
	return checkPartitionMapping(ctx, conn, cfg)
}

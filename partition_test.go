package walhook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/mapping"
	"github.com/walhook/walhook/schema"
)

const partitionConfig = `
tables:
  - table: public.items
    noun: item
    acl: "true"
`

const partitionSchema = `
CREATE TABLE public.items (
    id     bigint NOT NULL,
    region text NOT NULL,
    name   text,
    note   text,
    PRIMARY KEY (id, region)
) PARTITION BY LIST (region);
CREATE TABLE public.items_eu PARTITION OF public.items FOR VALUES IN ('eu');
CREATE TABLE public.items_us PARTITION OF public.items FOR VALUES IN ('us');
`

// describe reads a delivery as "event id region name prev=region/name", the
// previous row's fields when there is one.
func describe(t *testing.T, d e2e.Delivery) string {
	t.Helper()
	env := d.Envelope(t)
	data, _ := env["data"].(map[string]any)
	s := fmt.Sprintf("%v %v %v %v", env["event"], data["id"], data["region"], data["name"])
	if prev, ok := env["previous"].(map[string]any); ok {
		s += fmt.Sprintf(" prev=%v/%v/%v", prev["region"], prev["name"], prev["note"])
	}
	return s
}

func describeAll(t *testing.T, ds []e2e.Delivery) []string {
	t.Helper()
	var out []string
	for _, d := range ds {
		out = append(out, describe(t, d))
	}
	slices.Sort(out)
	return out
}

// relIdentity returns each relation's replica identity: f, d, i or n.
func relIdentity(t *testing.T, e *env, rels ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range rels {
		var ident string
		if err := e.Conn.QueryRow(context.Background(), `SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass`, r).Scan(&ident); err != nil {
			t.Fatalf("replica identity of %s: %v", r, err)
		}
		out[r] = ident
	}
	return out
}

// TestPartitionedTable maps a partitioned table end to end: install
// publishes it via its root and settles, its changes arrive under its name,
// a row moved to another partition arrives as one update with the whole old
// row, and partitions created or attached after install are covered.
func TestPartitionedTable(t *testing.T) {
	t.Parallel()
	e := &env{Env: e2e.NewEnv(t, partitionConfig, partitionSchema)}
	first := e.install()
	want := "set REPLICA IDENTITY FULL on partitioned table public.items: public.items, public.items_eu, public.items_us"
	if !slices.ContainsFunc(first, func(l string) bool { return strings.HasPrefix(l, want) }) {
		t.Fatalf("first install = %q, want a line starting %q", first, want)
	}
	if !slices.ContainsFunc(first, func(l string) bool { return strings.HasPrefix(l, "created event trigger "+partitionTrigger) }) {
		t.Fatalf("first install = %q, want the event trigger created", first)
	}
	if again := e.install(); len(again) != 0 {
		t.Fatalf("second install = %q, want no changes", again)
	}
	var published []string
	rows, _ := e.Conn.Query(context.Background(), `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, e2e.Publication)
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		published = append(published, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(published, []string{"public.items", "walhook.subscriptions"}) {
		t.Fatalf("pg_publication_tables = %q, want public.items and walhook.subscriptions", published)
	}

	e.Subscribe("item.*", "/items")
	e.start()
	e.Exec(`INSERT INTO public.items VALUES (1, 'eu', 'a', 'n1')`)
	// Moves the row to items_us.
	e.Exec(`UPDATE public.items SET region = 'us' WHERE id = 1`)
	e.Exec(`UPDATE public.items SET name = 'b' WHERE id = 1`)
	e.Exec(`DELETE FROM public.items WHERE id = 1`)

	// Partitions added after install: one created as a partition, one
	// attached; the event trigger gives both REPLICA IDENTITY FULL.
	e.Exec(`CREATE TABLE public.items_asia PARTITION OF public.items FOR VALUES IN ('asia')`)
	e.Exec(`CREATE TABLE public.items_sa (LIKE public.items INCLUDING ALL)`)
	e.Exec(`ALTER TABLE public.items ATTACH PARTITION public.items_sa FOR VALUES IN ('sa')`)
	got := relIdentity(t, e, "public.items_asia", "public.items_sa")
	if got["public.items_asia"] != "f" || got["public.items_sa"] != "f" {
		t.Fatalf("replica identity of later partitions = %v, want f for both", got)
	}
	// Two rows moved by one statement, in one transaction with another
	// change; a delete and insert of different rows stay apart.
	e.Exec(`INSERT INTO public.items VALUES (2, 'sa', 'c', 'n2'), (3, 'sa', 'd', 'n3')`)
	e.Exec(`BEGIN; UPDATE public.items SET region = 'asia' WHERE region = 'sa';
		INSERT INTO public.items VALUES (4, 'eu', 'e', 'n4'); COMMIT`)
	e.Exec(`BEGIN; DELETE FROM public.items WHERE id = 4; INSERT INTO public.items VALUES (5, 'eu', 'f', 'n5'); COMMIT`)
	if again := e.install(); len(again) != 0 {
		t.Fatalf("install after partitions were added = %q, want no changes", again)
	}

	wantAll := []string{
		"item.created 1 eu a",
		"item.created 2 sa c",
		"item.created 3 sa d",
		"item.created 4 eu e",
		"item.created 5 eu f",
		"item.deleted 1 us b",
		"item.deleted 4 eu e",
		"item.updated 1 us a prev=eu/a/n1",
		"item.updated 1 us b prev=us/a/n1",
		"item.updated 2 asia c prev=sa/c/n2",
		"item.updated 3 asia d prev=sa/d/n3",
	}
	ds := e.Recv.Wait(t, "/items", len(wantAll))
	if got := describeAll(t, ds); !slices.Equal(got, wantAll) {
		t.Fatalf("deliveries =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantAll, "\n"))
	}
}

// TestPartitionAndParentMapped refuses a config that maps a partition and its
// partitioned table: the partition's changes arrive under the parent's name.
func TestPartitionAndParentMapped(t *testing.T) {
	t.Parallel()
	cfg := partitionConfig + `
  - table: public.items_eu
    noun: eu_item
    acl: "true"
`
	e := e2e.NewEnv(t, cfg, partitionSchema)
	_, err := Install(context.Background(), e.Conn, e.Config(), InstallOptions{Slot: e.Slot, Publication: e2e.Publication})
	var errs mapping.Errors
	if !errors.As(err, &errs) || len(errs) != 1 || !strings.Contains(errs[0].Error(), "public.items_eu is a partition of public.items, which is also mapped") {
		t.Fatalf("Install() = %v, want the partition refused", err)
	}
}

const keylessConfig = `
tables:
  - table: public.notes
    noun: note
    key: [code]
    acl: "true"
  - table: public.tags
    noun: tag
    key: [code]
    acl: "true"
  - table: public.links
    noun: link
    key: [code]
    acl: "true"
  - table: public.marks
    noun: mark
    key: [code]
    acl: row.label != 'secret'
`

const keylessSchema = `
CREATE TABLE public.notes (code text NOT NULL, body text);
CREATE TABLE public.tags (code text NOT NULL, label text);
CREATE UNIQUE INDEX tags_code ON public.tags (code);
-- Unique but nullable: not usable as a replica identity.
CREATE TABLE public.links (code text, url text);
CREATE UNIQUE INDEX links_code ON public.links (code);
-- A usable key index, but the rule reads label of deleted rows: FULL.
CREATE TABLE public.marks (code text NOT NULL, label text);
CREATE UNIQUE INDEX marks_code ON public.marks (code);
`

// TestKeylessTable maps tables without a primary key: install gives each a
// replica identity (the unique index on the key when there is a usable one
// and the rules need no more, else FULL), the application's UPDATE and
// DELETE succeed, and events carry the key.
func TestKeylessTable(t *testing.T) {
	t.Parallel()
	e := &env{Env: e2e.NewEnv(t, keylessConfig, keylessSchema)}
	first := e.install()
	for _, want := range []string{
		"set REPLICA IDENTITY FULL on public.links (was DEFAULT",
		"set REPLICA IDENTITY FULL on public.notes (was DEFAULT",
		"set REPLICA IDENTITY FULL on public.marks (was DEFAULT",
		`set REPLICA IDENTITY USING INDEX tags_code on public.tags:`,
	} {
		if !slices.ContainsFunc(first, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("first install = %q, want a line starting %q", first, want)
		}
	}
	if again := e.install(); len(again) != 0 {
		t.Fatalf("second install = %q, want no changes", again)
	}
	got := relIdentity(t, e, "public.notes", "public.tags", "public.links", "public.marks")
	if want := map[string]string{"public.notes": "f", "public.tags": "i", "public.links": "f", "public.marks": "f"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("replica identities = %v, want %v", got, want)
	}

	e.Subscribe("note.*", "/k")
	e.Subscribe("tag.*", "/k")
	e.Subscribe("link.*", "/k")
	e.Subscribe("mark.*", "/k")
	e.start()
	for _, tbl := range []string{"notes", "tags", "links", "marks"} {
		// The application's own writes: each would fail without a replica
		// identity ("does not have a replica identity and publishes updates").
		e.Exec(fmt.Sprintf(`INSERT INTO public.%s VALUES ('a', 'one'), ('b', 'two')`, tbl))
		e.Exec(fmt.Sprintf(`UPDATE public.%s SET code = 'c' WHERE code = 'b'`, tbl))
		e.Exec(fmt.Sprintf(`DELETE FROM public.%s WHERE code = 'a'`, tbl))
	}
	var want []string
	for _, noun := range []string{"note", "tag", "link", "mark"} {
		want = append(want, noun+".created a", noun+".created b", noun+".updated c", noun+".deleted a")
	}
	slices.Sort(want)
	ds := e.Recv.Wait(t, "/k", len(want))
	var gotEv []string
	for _, d := range ds {
		env := d.Envelope(t)
		data, _ := env["data"].(map[string]any)
		gotEv = append(gotEv, fmt.Sprintf("%v %v", env["event"], data["code"]))
	}
	slices.Sort(gotEv)
	if !slices.Equal(gotEv, want) {
		t.Fatalf("deliveries = %q, want %q", gotEv, want)
	}
}

// TestPartitionIdentityWithoutSuperuser installs the replica identities as a
// role that owns the tables but cannot create the event trigger: a
// partitioned table with a primary key is set up with a warning that later
// partitions need install again, and a partition attached later is named
// as drift; one without a primary key is refused.
func TestPartitionIdentityWithoutSuperuser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := e2e.NewEnv(t, partitionConfig, partitionSchema, `
		CREATE TABLE public.logs (id bigint NOT NULL, day date NOT NULL, line text) PARTITION BY RANGE (day);
		CREATE TABLE public.logs_2024 PARTITION OF public.logs FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');`)
	role := e2e.RoleName("owner_", e.Slot)
	qr := pgx.Identifier{role}.Sanitize()
	e.Exec(`CREATE ROLE ` + qr + ` LOGIN`)
	t.Cleanup(func() {
		for _, sql := range []string{`REASSIGN OWNED BY ` + qr + ` TO CURRENT_USER`, `DROP OWNED BY ` + qr, `DROP ROLE ` + qr} {
			if _, err := e.Conn.Exec(context.WithoutCancel(ctx), sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})
	for _, tbl := range []string{"items", "items_eu", "items_us", "logs", "logs_2024"} {
		e.Exec(`ALTER TABLE public.` + tbl + ` OWNER TO ` + qr)
	}
	// The schema, as a superuser would have installed it; the role records
	// the identities it changes.
	if _, err := schema.Install(ctx, e.Conn, schema.Options{}); err != nil {
		t.Fatalf("install schema: %v", err)
	}
	e.Exec(`GRANT USAGE ON SCHEMA walhook TO ` + qr)
	e.Exec(`GRANT SELECT, INSERT ON walhook.settings TO ` + qr)
	conn, err := pgx.Connect(ctx, e2e.DSNAs(t, e.DSN, role))
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	identity := func(cfg *mapping.Config) ([]string, error) {
		t.Helper()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		changes, _, err := ensureTableIdentity(ctx, tx, cfg, nil)
		if err != nil {
			_ = tx.Rollback(ctx)
			return nil, err
		}
		return changes, tx.Commit(ctx)
	}

	cfg := e.Config()
	changes, err := identity(cfg)
	if err != nil {
		t.Fatalf("ensureTableIdentity() = %v", err)
	}
	if len(changes) != 1 || !strings.Contains(changes[0], "partitions created or attached later need walhook install again") {
		t.Fatalf("ensureTableIdentity() = %q, want one line warning that later partitions need install again", changes)
	}
	e.Exec(`CREATE TABLE public.items_asia PARTITION OF public.items FOR VALUES IN ('asia')`)
	drift, err := identityDrift(ctx, conn, cfg.Tables)
	if want := []string{"REPLICA IDENTITY FULL on public.items_asia (a partition of public.items)"}; err != nil || !slices.Equal(drift, want) {
		t.Fatalf("identityDrift() = %q, %v; want %q", drift, err, want)
	}

	keyless := *cfg
	keyless.Tables = []*mapping.TableConfig{{Table: "public.logs", Noun: "log", Key: []string{"id"}, ACL: "true"}}
	_, err = identity(&keyless)
	if err == nil || !strings.Contains(err.Error(), "cannot map public.logs: a partitioned table without a primary key") {
		t.Fatalf("ensureTableIdentity(keyless partitioned) = %v, want it refused", err)
	}
	if got := relIdentity(t, &env{Env: e}, "public.logs", "public.logs_2024"); got["public.logs"] != "d" || got["public.logs_2024"] != "d" {
		t.Fatalf("replica identities after the refusal = %v, want them untouched", got)
	}
}

// TestPartitionTriggerNeverFailsDDL: when the event trigger's function cannot
// alter a new partition (here it is owned by a role without rights), the
// application's CREATE TABLE still succeeds, check and run name the
// partition, and install takes the function over and sets the identity.
func TestPartitionTriggerNeverFailsDDL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, partitionConfig, partitionSchema)
	role := e2e.RoleName("fn_", e.Slot)
	qr := pgx.Identifier{role}.Sanitize()
	e.Exec(`CREATE ROLE ` + qr)
	t.Cleanup(func() {
		for _, sql := range []string{`REASSIGN OWNED BY ` + qr + ` TO CURRENT_USER`, `DROP OWNED BY ` + qr, `DROP ROLE ` + qr} {
			if _, err := e.Conn.Exec(context.WithoutCancel(ctx), sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})
	e.Exec(`GRANT USAGE, CREATE ON SCHEMA walhook TO ` + qr)
	e.Exec(`ALTER FUNCTION walhook._partition_identity() OWNER TO ` + qr)
	e.Exec(`CREATE TABLE public.items_asia PARTITION OF public.items FOR VALUES IN ('asia')`)
	if got := relIdentity(t, e, "public.items_asia")["public.items_asia"]; got != "d" {
		t.Fatalf("replica identity of the new partition = %s, want d (the trigger could not set it)", got)
	}
	drift, err := identityDrift(ctx, e.Conn, e.Config().Tables)
	if want := []string{"REPLICA IDENTITY FULL on public.items_asia (a partition of public.items)"}; err != nil || !slices.Equal(drift, want) {
		t.Fatalf("identityDrift() = %q, %v; want %q", drift, err, want)
	}
	changes := e.install()
	for _, want := range []string{
		"walhook._partition_identity() now runs as a superuser",
		"set REPLICA IDENTITY FULL on partitioned table public.items: public.items_asia (walhook uninstall restores them):",
	} {
		if !slices.ContainsFunc(changes, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("install = %q, want a line starting %q", changes, want)
		}
	}
	e.Exec(`CREATE TABLE public.items_sa PARTITION OF public.items FOR VALUES IN ('sa')`)
	if got := relIdentity(t, e, "public.items_sa")["public.items_sa"]; got != "f" {
		t.Fatalf("replica identity of a partition created after install = %s, want f", got)
	}
}

// TestPublicationViaRootHealed: a publication that stops publishing via the
// partition root sends a partitioned table's changes under its partitions'
// names, which map to nothing; the leader names it and turns it back on.
func TestPublicationViaRootHealed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, partitionConfig, partitionSchema)
	e.Subscribe("item.created", "/c")
	e.start()
	// Streaming: past run's check of the installation.
	e.Exec(`INSERT INTO public.items VALUES (0, 'eu', 'z', 'n0')`)
	e.Recv.WaitRows(t, "/c", 0)
	e.Exec(`ALTER PUBLICATION walhook SET (publish_via_partition_root = false)`)
	e2e.WaitFor(t, 30*time.Second, "the publication to publish via the root again", func() bool {
		return e.Count(`SELECT count(*) FROM pg_publication WHERE pubname = 'walhook' AND pubviaroot`) == 1
	})
	e.Exec(`INSERT INTO public.items VALUES (1, 'eu', 'a', 'n1')`)
	e.Recv.WaitRows(t, "/c", 0, 1)
}

// TestSubPartitionedMove: a row moved between partitions of a partition (the
// second level's key changes) is one update too: the partition key columns
// of every level are left out of the pairing key.
func TestSubPartitionedMove(t *testing.T) {
	t.Parallel()
	e := newEnv(t, `
tables:
  - table: public.events
    noun: ev
    acl: "true"
`, `
CREATE TABLE public.events (id bigint, region text, day date, name text, PRIMARY KEY (id, region, day)) PARTITION BY LIST (region);
CREATE TABLE public.events_eu PARTITION OF public.events FOR VALUES IN ('eu') PARTITION BY RANGE (day);
CREATE TABLE public.events_eu_2024 PARTITION OF public.events_eu FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.events_eu_2025 PARTITION OF public.events_eu FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');`)
	if got := relIdentity(t, e, "public.events_eu", "public.events_eu_2024"); got["public.events_eu"] != "f" || got["public.events_eu_2024"] != "f" {
		t.Fatalf("replica identities = %v, want FULL at every level", got)
	}
	e.Subscribe("ev.*", "/ev")
	e.start()
	e.Exec(`INSERT INTO public.events VALUES (1, 'eu', '2024-06-01', 'a')`)
	e.Exec(`UPDATE public.events SET day = '2025-06-01' WHERE id = 1`)
	ds := e.Recv.Wait(t, "/ev", 2)
	var got []string
	for _, d := range ds {
		env := d.Envelope(t)
		data, _ := env["data"].(map[string]any)
		prev, _ := env["previous"].(map[string]any)
		got = append(got, fmt.Sprintf("%v %v prev=%v", env["event"], data["day"], prev["day"]))
	}
	slices.Sort(got)
	if want := []string{"ev.created 2024-06-01 prev=<nil>", "ev.updated 2025-06-01 prev=2024-06-01"}; !slices.Equal(got, want) {
		t.Fatalf("deliveries = %q, want %q", got, want)
	}
}

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestCheckPartitionedTable shows what check says of mapped partitioned
// tables, and that check warns of, and run refuses, a partition added
// without the replica identity install gives the others.
func TestCheckPartitionedTable(t *testing.T) {
	t.Parallel()
	cfg := `
tables:
  - table: public.items
    noun: item
    acl: "true"
  - table: public.logs
    noun: log
    key: [day]
    acl: "true"
`
	e := newEnv(t, cfg, `
		CREATE TABLE public.items (id bigint, region text, name text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE public.items_eu PARTITION OF public.items FOR VALUES IN ('eu');
		CREATE TABLE public.logs (day date NOT NULL, line text) PARTITION BY RANGE (day);
		CREATE TABLE public.logs_2024 PARTITION OF public.logs FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');`)
	ctx := context.Background()
	// As if install had run without a superuser: no event trigger.
	e.Exec(`DROP EVENT TRIGGER walhook_partition_identity`)
	e.Exec(`CREATE TABLE public.items_us PARTITION OF public.items FOR VALUES IN ('us')`)

	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"check", "--config", e.CfgPath, "--database-url", e.DSN}, &out, &errOut); err != nil {
		t.Fatalf("check: %v (%s)", err, errOut.String())
	}
	for _, want := range []string{
		"note: " + e.CfgPath + ":3: public.items is partitioned: changes to its partitions, also ones added later, arrive as its own",
		"a row moved to another partition arrives as one update, matched by id\n",
		"public.logs is partitioned",
		"a row moved to another partition arrives as a delete and a create, since its key is made of partition key columns only",
		"warning: " + e.CfgPath + ": REPLICA IDENTITY FULL on public.items_us (a partition of public.items) is not set (walhook install sets it)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}

	out.Reset()
	err := run(ctx, []string{"run", "--database-url", e.DSN, "--config", e.CfgPath, "--slot", e.Slot, "--listen", ""}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "not installed: REPLICA IDENTITY FULL on public.items_us (a partition of public.items)") {
		t.Fatalf("run with a partition lacking its replica identity = %v, want it refused naming the partition", err)
	}
}

// TestUninstallDropsPartitionTrigger: uninstall drops the event trigger
// install created for a mapped partitioned table, and restores the replica
// identity of the table and its partitions.
func TestUninstallDropsPartitionTrigger(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "tables:\n  - table: public.items\n    noun: item\n    acl: 'true'\n",
		`CREATE TABLE public.items (id bigint, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE public.items_eu PARTITION OF public.items FOR VALUES IN ('eu')`)
	ctx := context.Background()
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"uninstall", "--database-url", e.DSN, "--slot", e.Slot}, &out, &errOut); err != nil {
		t.Fatalf("uninstall: %v (%s)", err, errOut.String())
	}
	if !strings.Contains(out.String(), "dropped event trigger walhook_partition_identity") {
		t.Fatalf("uninstall output = %q, want the event trigger dropped", out.String())
	}
	if n := e.Count(`SELECT count(*) FROM pg_event_trigger WHERE evtname = 'walhook_partition_identity'`); n != 0 {
		t.Fatalf("event triggers left = %d, want 0", n)
	}
	if n := e.Count(`SELECT count(*) FROM pg_class WHERE relname IN ('items', 'items_eu') AND relreplident = 'd'`); n != 2 {
		t.Fatalf("tables back at REPLICA IDENTITY DEFAULT = %d, want 2 (%s)", n, out.String())
	}
}

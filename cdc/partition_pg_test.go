package cdc

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/change"
)

// TestStreamCrossPartitionUpdate pins what pgoutput sends (PostgreSQL 15)
// when an UPDATE moves a row to another partition, with the publication
// publishing via the partition root: a delete and an insert, one right after
// the other in one transaction, both under the partitioned table's name.
// The delete's old row is marked with the root's replica identity but holds
// what the partition logged: the key under DEFAULT, the whole row when the
// partition is FULL, and NULL for every unlogged column when the root is FULL
// but the partition is not, which is why install keeps them alike.
func TestStreamCrossPartitionUpdate(t *testing.T) {
	t.Parallel()
	db := newSlotDB(t)
	db.exec(t, `CREATE TABLE public.parts (id int, region text, name text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`)
	for _, p := range []string{"eu", "us", "asia"} {
		db.exec(t, `CREATE TABLE public.parts_`+p+` PARTITION OF public.parts FOR VALUES IN ('`+p+`')`)
	}
	changes, err := EnsurePublication(context.Background(), db.conn, db.pub, []string{"public.items", "public.parts"}, false)
	if err != nil {
		t.Fatalf("EnsurePublication() = %v", err)
	}
	if len(changes) != 1 {
		t.Fatalf("EnsurePublication() = %q, want public.parts added", changes)
	}
	var viaRoot bool
	if err := db.conn.QueryRow(context.Background(), `SELECT pubviaroot FROM pg_publication WHERE pubname = $1`, db.pub).Scan(&viaRoot); err != nil || !viaRoot {
		t.Fatalf("pubviaroot = %v, %v; want true", viaRoot, err)
	}
	r := startStream(t, db, db.slotInfo(t).ConfirmedFlush)

	db.exec(t, `INSERT INTO public.parts VALUES (1, 'eu', 'a')`)
	db.exec(t, `UPDATE public.parts SET region = 'us' WHERE id = 1`)
	db.exec(t, `ALTER TABLE public.parts REPLICA IDENTITY FULL`)
	db.exec(t, `ALTER TABLE public.parts_us REPLICA IDENTITY FULL`)
	db.exec(t, `UPDATE public.parts SET region = 'asia' WHERE id = 1`)
	// parts_asia is still DEFAULT under a FULL root.
	db.exec(t, `UPDATE public.parts SET region = 'eu' WHERE id = 1`)

	want := []string{
		"change insert public.parts old=[] new=[1,eu,a]", "commit",
		// Both DEFAULT: the key only.
		"change delete public.parts old=[1,eu,?] new=[]", "change insert public.parts old=[] new=[1,us,a]", "commit",
		// Both FULL: the whole old row.
		"change delete public.parts old=[1,us,a] new=[]", "change insert public.parts old=[] new=[1,asia,a]", "commit",
		// Root FULL, partition DEFAULT: name was 'a', and arrives as NULL.
		"change delete public.parts old=[1,asia,NULL] new=[]", "change insert public.parts old=[] new=[1,eu,a]", "commit",
	}
	var prev Message
	for i, w := range want {
		m := r.next(t)
		if got := describe(m); got != w {
			t.Fatalf("message %d = %q, want %q", i, got, w)
		}
		if prev.Kind == KindChange && prev.Change.Op == change.Delete && m.Txn != prev.Txn {
			t.Fatalf("message %d: the insert is in another transaction than the delete before it", i)
		}
		prev = m
	}
}

// TestEnsurePublicationViaRoot: a publication made without
// publish_via_partition_root lists a partitioned table's partitions, never
// the table; EnsurePublication sets the option, after which the table is
// listed and a second call changes nothing.
func TestEnsurePublicationViaRoot(t *testing.T) {
	t.Parallel()
	db := newSlotDB(t)
	ctx := context.Background()
	db.exec(t, `CREATE TABLE public.parts (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)`)
	db.exec(t, `CREATE TABLE public.parts_eu PARTITION OF public.parts FOR VALUES IN ('eu')`)
	db.exec(t, `CREATE PUBLICATION old_pub FOR TABLE public.parts WITH (publish = 'insert, update, delete')`)
	tables := func() []string {
		rows, err := db.conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'old_pub' ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := tables(); !slices.Equal(got, []string{"public.parts_eu"}) {
		t.Fatalf("tables before = %q, want the partition only", got)
	}
	changes, err := EnsurePublication(ctx, db.conn, "old_pub", []string{"public.parts"}, false)
	if err != nil || !slices.Equal(changes, []string{"publication old_pub publishes insert, update, delete, partitions via their partitioned table"}) {
		t.Fatalf("EnsurePublication() = %q, %v; want the option set and nothing else", changes, err)
	}
	if got := tables(); !slices.Equal(got, []string{"public.parts"}) {
		t.Fatalf("tables after = %q, want the partitioned table", got)
	}
	if changes, err := EnsurePublication(ctx, db.conn, "old_pub", []string{"public.parts"}, false); err != nil || len(changes) != 0 {
		t.Fatalf("EnsurePublication() again = %q, %v; want no changes", changes, err)
	}
}

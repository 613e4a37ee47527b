package cdc

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/golden"
	"github.com/walhook/walhook/internal/pgtest"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

// typesSchema has a column for each kind of type that needs the catalog to
// be encoded faithfully.
const typesSchema = `
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN qty AS posint;
CREATE DOMAIN price AS numeric(12,2);
CREATE DOMAIN yes AS boolean;
CREATE DOMAIN doc AS jsonb;
CREATE DOMAIN label AS text;
CREATE DOMAIN qtys AS int[];
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (n int, s text);
CREATE TYPE order_line AS (id qty, p pair, gone int, tags text[], moods mood[], at timestamptz, cost price, ok yes);
ALTER TYPE order_line DROP ATTRIBUTE gone;
CREATE TYPE pos AS RANGE (subtype = int);
CREATE TABLE public.types (
    id          int PRIMARY KEY,
    d_int       qty,
    d_numeric   price,
    d_bool      yes,
    d_jsonb     doc,
    d_text      label,
    d_int_arr   qty[],
    d_over_arr  qtys,
    moods       mood[],
    mood_grid   mood[][],
    mood_one    mood,
    pair        pair,
    pair_null   pair,
    pair_nulls  pair,
    pair_quoted pair,
    line        order_line,
    pairs       pair[],
    r_int       int4range,
    r_num       numrange,
    r_empty     int4range,
    r_tstz      tstzrange,
    r_user      pos,
    r_multi     int4multirange,
    ranges      int4range[],
    boxes       box[],
    points      point[]
);
CREATE TABLE public.plain (id int PRIMARY KEY, q qty, m mood[]);
`

const typesRow = `
INSERT INTO public.types VALUES (
    1, 3, 12.5, true, '{"a": [1, 2]}', 'hello',
    '{1,NULL,3}', '{4,5}', '{sad,happy,NULL}', '{{sad,ok},{happy,NULL}}', 'ok',
    ROW(1, 'abc'), NULL, ROW(NULL, NULL), ROW(2, 'say "hi", (then) \ leave'),
    ROW(7, ROW(8, 'x y'), '{a,"b c",NULL}', '{ok,sad}', '2024-02-29 13:14:15.5+02', 9.99, false)::order_line,
    ARRAY[ROW(1, 'a'), ROW(2, 'b "c"'), NULL]::pair[],
    '[1,5)', '(1.5,2.5]', 'empty', '["2024-01-01 00:00:00+00",)', '[3,4]', '{[1,3),[7,9)}',
    '{"[1,2)",empty}', ARRAY[box '((1,1),(0,0))', box '((3,3),(2,2))'], '{"(1,2)","(3.5,-4)"}'
)`

// TestTypesGolden pins the JSON form of domains, enum arrays, composites,
// arrays of them and ranges, as the stream decodes them from a real server.
// Rewrite with -update and review the diff.
func TestTypesGolden(t *testing.T) {
	t.Parallel()
	h := newTypesHarness(t)
	h.start()
	h.exec(typesRow)
	got, rel := h.nextRowRel(t, "types")
	// Rules read values by the column's base type, as the body does.
	wantBase := map[string]uint32{
		"d_int": pgtype.Int4OID, "d_numeric": pgtype.NumericOID, "d_bool": pgtype.BoolOID,
		"d_jsonb": pgtype.JSONBOID, "d_text": pgtype.TextOID, "d_int_arr": pgtype.Int4ArrayOID,
		"d_over_arr": pgtype.Int4ArrayOID, "moods": pgtype.TextArrayOID, "mood_grid": pgtype.TextArrayOID,
		"mood_one": pgtype.TextOID,
	}
	for _, c := range rel.Columns {
		if c.Base != wantBase[c.Name] {
			t.Errorf("column %s: Base = %d, want %d", c.Name, c.Base, wantBase[c.Name])
		}
	}
	if w := h.logs.String(); strings.Contains(w, "level=WARN") {
		t.Fatalf("warnings while resolving types:\n%s", w)
	}
	golden.CheckJSON(t, filepath.Join("..", "testdata", "golden", "types.catalog.json"), got, *update)
}

// TestTypesFallBackToStrings: a type that cannot be looked up (here: dropped
// before the stream decodes changes written while it existed, as after
// downtime) leaves its values as strings with one warning per type; the
// stream goes on, and the relation's next shape is resolved.
func TestTypesFallBackToStrings(t *testing.T) {
	t.Parallel()
	h := newTypesHarness(t)
	h.exec(`CREATE DOMAIN gone_qty AS int`)
	h.exec(`CREATE TYPE gone_mood AS ENUM ('sad', 'ok')`)
	h.exec(`CREATE TABLE public.gone (id int PRIMARY KEY, q gone_qty, m gone_mood[])`)
	h.exec(`ALTER PUBLICATION types_pub ADD TABLE public.gone`)
	h.exec(`INSERT INTO public.gone VALUES (1, 2, '{sad}')`)
	h.exec(`INSERT INTO public.gone VALUES (2, 3, '{ok}')`)
	h.exec(`ALTER TABLE public.gone ALTER COLUMN q TYPE int, ALTER COLUMN m TYPE text[]`)
	h.exec(`DROP DOMAIN gone_qty`)
	h.exec(`DROP TYPE gone_mood`)
	h.exec(`INSERT INTO public.gone VALUES (3, 4, '{ok}')`)
	h.start()
	for i, want := range []string{`{"id":1,"q":"2","m":"{sad}"}`, `{"id":2,"q":"3","m":"{ok}"}`, `{"id":3,"q":4,"m":["ok"]}`} {
		if got := h.nextRow(t, "gone"); string(got) != want {
			t.Fatalf("row %d = %s, want %s", i+1, got, want)
		}
	}
	logs := h.logs.String()
	if n := strings.Count(logs, "column type not resolved"); n != 2 {
		t.Fatalf("got %d type warnings, want one for each of gone_qty and gone_mood[]:\n%s", n, logs)
	}
}

type typesHarness struct {
	t    *testing.T
	dsn  string
	slot string
	conn *pgx.Conn
	msgs chan Message
	logs *syncBuffer
}

// newTypesHarness creates typesSchema in a fresh database with a slot and a
// publication; start runs a Stream on them.
func newTypesHarness(t *testing.T) *typesHarness {
	t.Helper()
	h := &typesHarness{t: t, dsn: pgtest.NewDatabase(t), msgs: make(chan Message, 64), logs: &syncBuffer{}}
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.WithoutCancel(ctx)) })
	h.conn = conn
	h.exec(typesSchema)
	h.exec(`CREATE PUBLICATION types_pub FOR TABLE public.types, public.plain`)
	// Slots are cluster-wide: the database's name is this test's alone.
	if err := conn.QueryRow(ctx, `SELECT slot_name FROM pg_create_logical_replication_slot(current_database(), 'pgoutput')`).Scan(&h.slot); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *typesHarness) start() {
	t := h.t
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := New(Config{DatabaseURL: h.dsn, Slot: h.slot, Publication: "types_pub"}, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Run(ctx, h.msgs); err != nil && ctx.Err() == nil {
			t.Errorf("Run() = %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func (h *typesHarness) exec(sql string) {
	h.t.Helper()
	if _, err := h.conn.Exec(h.t.Context(), sql); err != nil {
		h.t.Fatalf("%s: %v", sql, err)
	}
}

// nextRow waits for the next change to table and returns its new row as a
// JSON object, each column encoded with the encoder the stream gave it.
func (h *typesHarness) nextRow(t *testing.T, table string) []byte {
	t.Helper()
	b, _ := h.nextRowRel(t, table)
	return b
}

// nextRowRel is nextRow also returning the change's relation.
func (h *typesHarness) nextRowRel(t *testing.T, table string) ([]byte, *change.Relation) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-h.msgs:
			if m.Kind != KindChange || m.Change.Relation.Name != table {
				continue
			}
			rel := m.Change.Relation
			b := []byte{'{'}
			for i, c := range rel.Columns {
				if i > 0 {
					b = append(b, ',')
				}
				b = change.AppendString(b, []byte(c.Name))
				b = append(b, ':')
				b = change.AppendJSON(b, c.Enc, m.Change.New[i])
			}
			b = append(b, '}')
			if !json.Valid(b) {
				t.Fatalf("row is not valid JSON: %s", b)
			}
			return b, rel
		case <-deadline:
			t.Fatalf("no change to %s within 30s; logs:\n%s", table, h.logs.String())
		}
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestTypesFollowAlterType: pgoutput sends no RELATION message when a
// composite type used by a table is altered; a value that no longer has the
// type's number of attributes makes the stream look it up again. A rename
// keeps the number, so it is seen only at the table's next RELATION message
// (after DDL on the table, or a restart of the stream), or at the next change
// of the number.
func TestTypesFollowAlterType(t *testing.T) {
	t.Parallel()
	h := newTypesHarness(t)
	h.exec(`CREATE TABLE public.alt (id int PRIMARY KEY, p pair)`)
	h.exec(`ALTER PUBLICATION types_pub ADD TABLE public.alt`)
	h.start()
	// Each step waits for its row, so that the stream looks the type up
	// before the next DDL.
	steps := []struct{ sql, want string }{
		{`INSERT INTO public.alt VALUES (1, ROW(1, 'a'))`, `{"id":1,"p":{"n":1,"s":"a"}}`},
		{`ALTER TYPE pair ADD ATTRIBUTE extra int CASCADE; INSERT INTO public.alt VALUES (2, ROW(2, 'b', 3))`, `{"id":2,"p":{"n":2,"s":"b","extra":3}}`},
		{`ALTER TYPE pair ADD ATTRIBUTE more text CASCADE; INSERT INTO public.alt VALUES (3, ROW(4, 'c', 5, 'x'))`, `{"id":3,"p":{"n":4,"s":"c","extra":5,"more":"x"}}`},
		{`ALTER TYPE pair RENAME ATTRIBUTE more TO most CASCADE; INSERT INTO public.alt VALUES (4, ROW(6, 'd', 7, 'y'))`, `{"id":4,"p":{"n":6,"s":"d","extra":7,"more":"y"}}`},
		{`ALTER TABLE public.alt REPLICA IDENTITY FULL; INSERT INTO public.alt VALUES (5, ROW(8, 'e', 9, 'z'))`, `{"id":5,"p":{"n":8,"s":"e","extra":9,"most":"z"}}`},
		{`ALTER TYPE pair DROP ATTRIBUTE extra CASCADE; INSERT INTO public.alt VALUES (6, ROW(1, 'f', 'w'))`, `{"id":6,"p":{"n":1,"s":"f","most":"w"}}`},
	}
	for i, st := range steps {
		h.exec(st.sql)
		if got := string(h.nextRow(t, "alt")); got != st.want {
			t.Fatalf("row %d = %s, want %s", i+1, got, st.want)
		}
	}
}

// TestTypesBacklogAfterAlterType: a value written before ALTER TYPE and
// decoded after it cannot be read with the type as it is now; it is sent as
// its text, and the values written after the change as objects.
func TestTypesBacklogAfterAlterType(t *testing.T) {
	t.Parallel()
	h := newTypesHarness(t)
	h.exec(`CREATE TABLE public.alt (id int PRIMARY KEY, p pair)`)
	h.exec(`ALTER PUBLICATION types_pub ADD TABLE public.alt`)
	h.exec(`INSERT INTO public.alt VALUES (1, ROW(1, 'a'))`)
	h.exec(`ALTER TYPE pair ADD ATTRIBUTE extra int CASCADE`)
	h.exec(`INSERT INTO public.alt VALUES (2, ROW(2, 'b', 3))`)
	h.start()
	for i, want := range []string{`{"id":1,"p":"(1,a)"}`, `{"id":2,"p":{"n":2,"s":"b","extra":3}}`} {
		if got := string(h.nextRow(t, "alt")); got != want {
			t.Fatalf("row %d = %s, want %s", i+1, got, want)
		}
	}
}

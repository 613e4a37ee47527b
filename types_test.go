package walhook

import (
	"encoding/json"
	"flag"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/golden"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

const typesConfig = `
tables:
  - table: public.types
    noun: sample
    acl: "true"
  - table: public.docs
    noun: doc
    acl: "true"
`

const typesSchema = `
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.types (
    id          int PRIMARY KEY,
    small       smallint,
    big         bigint,
    exact       numeric,
    huge        numeric,
    nan         numeric,
    real4       real,
    double8     double precision,
    flag        boolean,
    label       text,
    quoted      text,
    code        varchar(10),
    fixed       char(3),
    ident       uuid,
    at          timestamptz,
    local_at    timestamp,
    day         date,
    doc         json,
    docb        jsonb,
    ints        int[],
    texts       text[],
    grid        int[][],
    feeling     mood,
    blob        bytea,
    nothing     text,
    span        interval
);
CREATE TABLE public.docs (id int PRIMARY KEY, title text, body text);
`

const typesRow = `
INSERT INTO public.types VALUES (
    1, -32768, 9223372036854775807, 12345.678900, 123456789012345678901234567890.123456789, 'NaN',
    1.5, 0.1, true, 'plain', 'say "hi"\ and	tab', 'varchar', 'ab',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29 13:14:15.123456+02', '2024-02-29 13:14:15', '2024-02-29',
    '{"b": 1, "a": [true, null]}', '{"b": 1, "a": [true, null]}',
    '{1,NULL,3}', '{"x y","NULL",NULL,"q\"uote"}', '{{1,2},{3,4}}',
    'happy', '\x00ff10', NULL, '1 day 02:03:04'
)`

var volatileRE = regexp.MustCompile(`"(id|occurred_at)":"[^"]*"`)

// TestColumnTypesGolden pins the request body for every supported column
// type in both body forms. Rewrite with -update and review the diff.
func TestColumnTypesGolden(t *testing.T) {
	t.Parallel()
	e := newEnv(t, typesConfig, typesSchema)
	e.Subscribe("sample.created", "/envelope")
	e.Subscribe("sample.created", "/row", "/", "zapier")
	e.start()
	e.Exec(typesRow)

	env := e.Recv.Wait(t, "/envelope", 1)[0].Body
	row := e.Recv.Wait(t, "/row", 1)[0].Body
	for _, b := range [][]byte{env, row} {
		if !json.Valid(b) {
			t.Fatalf("body is not valid JSON: %s", b)
		}
	}
	// The event id and commit time differ from run to run.
	env = volatileRE.ReplaceAll(env, []byte(`"$1":"<$1>"`))
	checkGolden(t, "types.envelope.json", env)
	checkGolden(t, "types.row.json", row)
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	golden.CheckJSON(t, filepath.Join("testdata", "golden", name), got, *update)
}

// TestUnchangedToastIsNeverNull: an update that leaves a large value alone
// does not send it; walhook leaves it out, or fills it from the old row when
// the table sends one, and never reports null.
func TestUnchangedToastIsNeverNull(t *testing.T) {
	t.Parallel()
	e := newEnv(t, typesConfig, typesSchema)
	e.Subscribe("doc.updated", "/docs")
	e.start()

	// Random-looking text does not compress, so it is stored out of line.
	e.Exec(`INSERT INTO public.docs SELECT 1, 'first', string_agg(md5(i::text), '') FROM generate_series(1, 2000) i`)
	e.Exec(`UPDATE public.docs SET title = 'second' WHERE id = 1`)
	e.Exec(`ALTER TABLE public.docs REPLICA IDENTITY FULL`)
	e.Exec(`UPDATE public.docs SET title = 'third' WHERE id = 1`)

	got := e.Recv.Wait(t, "/docs", 2)
	byTitle := map[string]map[string]any{}
	for _, d := range got {
		env := d.Envelope(t)
		data := env["data"].(map[string]any)
		byTitle[data["title"].(string)] = env
	}
	second := byTitle["second"]["data"].(map[string]any)
	if v, present := second["body"]; present {
		t.Fatalf("default identity: unchanged TOAST body = %.20v..., want it left out", v)
	}
	third := byTitle["third"]
	body, _ := third["data"].(map[string]any)["body"].(string)
	if len(body) != 64000 {
		t.Fatalf("full identity: body has %d chars, want 64000 filled from the old row", len(body))
	}
	prev, _ := third["previous"].(map[string]any)
	if prev["title"] != "second" || len(prev["body"].(string)) != 64000 {
		t.Fatalf("previous = title %v, body %d chars; want second and 64000", prev["title"], len(prev["body"].(string)))
	}
	if strings.Contains(string(got[0].Body)+string(got[1].Body), `"body":null`) {
		t.Fatal("an unchanged TOAST value was reported as null")
	}
}

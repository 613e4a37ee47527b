package mapping

import (
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

const examplePath = "../testdata/walhook.yaml"

func TestLoadExample(t *testing.T) {
	cfg, err := Load(examplePath)
	if err != nil {
		t.Fatalf("Load(%s) error: %v", examplePath, err)
	}
	if cfg.File != examplePath {
		t.Fatalf("File = %q, want %q", cfg.File, examplePath)
	}
	if cfg.Owners == nil || !strings.Contains(cfg.Owners.Query, "= ANY($1)") ||
		!slices.Equal(cfg.Owners.Watch, []string{"app.users"}) || cfg.Owners.RemoveOnDelete == nil ||
		*cfg.Owners.RemoveOnDelete != (RemoveOnDelete{Table: "app.users", Column: "id", Line: 16, ColumnLine: 16}) {
		t.Fatalf("Owners = %+v, want the app.users query, watch and remove_on_delete", cfg.Owners)
	}
	var tables []string
	for _, tc := range cfg.Tables {
		tables = append(tables, tc.Table+"="+tc.Noun)
	}
	if want := []string{"public.orders=order", "public.customers=customer"}; !slices.Equal(tables, want) {
		t.Fatalf("tables = %v, want %v", tables, want)
	}
	orders := cfg.Tables[0]
	if len(orders.Events) != 1 || orders.Events[0].Name != "order.paid" || orders.Events[0].On != "update" ||
		orders.Events[0].When != "new.status == 'paid' && old.status != 'paid'" {
		t.Fatalf("orders events = %+v, want order.paid on update", orders.Events)
	}
	if orders.ACLLine == 0 || orders.Events[0].WhenLine == 0 {
		t.Fatalf("ACLLine = %d, WhenLine = %d, want the lines of the CEL expressions", orders.ACLLine, orders.Events[0].WhenLine)
	}
	if got := cfg.Dialects[DialectZapier]; got.Body != BodyRow || got.Headers["X-Source"] != "walhook" {
		t.Fatalf("zapier dialect = %+v, want row body with X-Source", got)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New() error: %v", err)
	}
	var names []string
	for _, e := range m.Events() {
		names = append(names, e.Name)
	}
	want := []string{"customer.created", "customer.existing", "customer.updated", "order.created", "order.deleted", "order.existing", "order.paid", "order.updated"}
	if !slices.Equal(names, want) {
		t.Fatalf("Events() = %v, want %v", names, want)
	}
	if err := cfg.CheckCatalog(exampleCatalog()); err != nil {
		t.Fatalf("CheckCatalog() = %v, want nil", err)
	}
}

// exampleCatalog is the schema testdata/walhook.yaml documents.
func exampleCatalog() Catalog {
	return Catalog{
		"app.users": {{Name: "id", Type: "bigint", NotNull: true, PrimaryKey: true}, {Name: "tenant_ids", Type: "bigint[]"}, {Name: "is_admin", Type: "boolean"}},
		"public.customers": {
			{Name: "id", Type: "bigint", NotNull: true, PrimaryKey: true}, {Name: "tenant_id", Type: "bigint"},
			{Name: "tenant_path", Type: "text"}, {Name: "name", Type: "text"}, {Name: "email", Type: "text"},
			{Name: "password_hash", Type: "text"}, {Name: "created_at", Type: "timestamp with time zone"},
		},
		"public.orders": {
			{Name: "id", Type: "bigint", NotNull: true, PrimaryKey: true}, {Name: "customer_id", Type: "bigint"},
			{Name: "tenant_id", Type: "bigint"}, {Name: "tenant_path", Type: "text"}, {Name: "status", Type: "text"},
			{Name: "total", Type: "numeric"}, {Name: "internal_note", Type: "text"},
			{Name: "created_at", Type: "timestamp with time zone"}, {Name: "paid_at", Type: "timestamp with time zone"},
		},
	}
}

const minimal = `tables:
  - table: public.orders
    noun: order
    acl: "true"
`

func TestParseDefaults(t *testing.T) {
	cfg, err := Parse("walhook.yaml", []byte(minimal))
	if err != nil {
		t.Fatalf("Parse() error: %v", err)
	}
	// Delivery and dialect defaults are deliver's: the config says only
	// what the file says.
	if !reflect.DeepEqual(cfg.Delivery, Delivery{}) {
		t.Fatalf("Delivery = %+v, want nothing set", cfg.Delivery)
	}
	wantDialects := map[string]*DialectConfig{
		"default": {Body: "envelope"},
		"zapier":  {Body: "row"},
	}
	if !reflect.DeepEqual(cfg.Dialects, wantDialects) {
		t.Fatalf("Dialects = %v, want %v", cfg.Dialects, wantDialects)
	}
	tc := cfg.Tables[0]
	if want := map[string]string{"insert": "created", "update": "updated", "delete": "deleted"}; !reflect.DeepEqual(tc.Verbs, want) {
		t.Fatalf("Verbs = %v, want %v", tc.Verbs, want)
	}
	if cfg.Owners != nil || tc.Key != nil || tc.Site != "" || tc.Line != 2 || tc.ACL != "true" || tc.ACLLine != 4 {
		t.Fatalf("Parse() = owners %v, table %+v; want no owners, no key or site, line 2, acl true at line 4", cfg.Owners, tc)
	}
}

func TestParseSettings(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, cfg *Config)
	}{
		{
			name: "delivery overrides",
			yaml: minimal + "delivery: {timeout: 5s, retry: [1s, 1m], max_in_flight: 8, max_per_host: 2, history: 1}\n",
			check: func(t *testing.T, cfg *Config) {
				want := Delivery{Timeout: 5 * time.Second, Retry: []time.Duration{time.Second, time.Minute}, MaxInFlight: 8, MaxPerHost: 2, History: 1}
				if !reflect.DeepEqual(cfg.Delivery, want) {
					t.Fatalf("Delivery = %+v, want %+v", cfg.Delivery, want)
				}
			},
		},
		{
			name: "dialects added and built-ins extended",
			yaml: minimal + `dialects:
  default:
    user_agent: acme-hooks/1.0
  zapier:
    headers: {X-Source: walhook}
  slack:
    body: row
    method: put
    headers: {X-Team: ops, Authorization: Bearer abc}
`,
			check: func(t *testing.T, cfg *Config) {
				want := map[string]*DialectConfig{
					"default": {Body: "envelope", UserAgent: "acme-hooks/1.0", Line: 6},
					"zapier":  {Body: "row", Headers: map[string]string{"X-Source": "walhook"}, Line: 8},
					"slack":   {Body: "row", Method: "PUT", Headers: map[string]string{"X-Team": "ops", "Authorization": "Bearer abc"}, Line: 10},
				}
				if !reflect.DeepEqual(cfg.Dialects, want) {
					t.Fatalf("Dialects = %v, want %v", cfg.Dialects, want)
				}
			},
		},
		{
			name: "single key string and columns",
			yaml: `tables:
  - table: public.orders
    noun: order
    key: id
    site: tenant_path
    columns: {include: [id, status]}
    acl: row.tenant_id in owner.tenants
`,
			check: func(t *testing.T, cfg *Config) {
				tc := cfg.Tables[0]
				if !slices.Equal(tc.Key, []string{"id"}) || tc.Site != "tenant_path" || !slices.Equal(tc.Columns.Include, []string{"id", "status"}) {
					t.Fatalf("table = %+v, want key [id], site tenant_path, include [id status]", tc)
				}
			},
		},
		{
			name: "verbs replace the defaults",
			yaml: `tables:
  - table: public.orders
    noun: order
    verbs: {insert: placed, update: "", delete: ~}
    acl: "true"
`,
			check: func(t *testing.T, cfg *Config) {
				want := map[string]string{"insert": "placed", "update": "", "delete": ""}
				if !reflect.DeepEqual(cfg.Tables[0].Verbs, want) {
					t.Fatalf("Verbs = %v, want %v", cfg.Tables[0].Verbs, want)
				}
			},
		},
		{
			name: "anchors and aliases",
			yaml: `tables:
  - table: public.orders
    noun: order
    acl: &tenant row.tenant_id in owner.tenants
  - table: public.customers
    noun: customer
    acl: *tenant
`,
			check: func(t *testing.T, cfg *Config) {
				if got := cfg.Tables[1].ACL; got != "row.tenant_id in owner.tenants" {
					t.Fatalf("ACL = %q, want the anchored rule", got)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("walhook.yaml", []byte(tc.yaml))
			if err != nil {
				t.Fatalf("Parse() error: %v", err)
			}
			tc.check(t, cfg)
		})
	}
}

// TestLoadBadFiles checks whole error messages for the files under
// testdata/config: the file:line: field: problem form is the contract.
func TestLoadBadFiles(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"bad-unknown-key.yaml", []string{
			`2: tables[0].noun: required: the event prefix, e.g. order for order.created`,
			`3: tables[0].nuon: unknown key "nuon" (allowed: table, noun, key, site, verbs, columns, acl, events, payload); did you mean "noun"?`,
			`5: tables[0].columns.includes: unknown key "includes" (allowed: include, exclude); did you mean "include"?`,
			`6: deliveries: unknown key "deliveries" (allowed: owners, tables, delivery, dialects, subscriptions)`,
		}},
		{"bad-verbs.yaml", []string{
			`7: tables[0].verbs.upsert: unknown operation "upsert" (want insert, update, delete, truncate or existing)`,
			`8: tables[0].verbs.update: verb "Updated" makes event "order.Updated", which is not of the form noun.verb (lower-case letters, digits and _)`,
		}},
		{"bad-duplicates.yaml", []string{
			`5: tables[1].table: table public.orders is already mapped by tables[0] (line 2); map each table once and add derived events to it`,
			`13: tables[2].events[0].name: event "order.created" is already produced by tables[0].noun (line 3); event names must be unique`,
		}},
		{"bad-columns.yaml", []string{
			`8: tables[0].columns: set include or exclude, not both`,
			`14: tables[1].columns.exclude[1]: "tenant_id" is a key column and cannot be excluded: receivers need the key to identify the row`,
			`20: tables[2].columns.include[1]: column "total" is listed twice (first at tables[2].columns.include[0])`,
			`20: tables[2].columns.include: leaves out key column "id": receivers need the key to identify the row`,
		}},
		{"bad-delivery.yaml", []string{
			`6: delivery.timeout: invalid duration "30" (want e.g. 30s, 5m or 2h)`,
			`7: delivery.retry[1]: negative duration -5s`,
			`7: delivery.retry[2]: invalid duration "soon" (want e.g. 30s, 5m or 2h)`,
			`8: delivery.max_in_flight: negative number -1 (want at least 1)`,
			`9: delivery.max_per_host: want a whole number, got "many"`,
			`10: delivery.history: 0 is too small (want at least 1)`,
		}},
		{"bad-dialects.yaml", []string{
			`7: dialects.default.body: the default dialect always sends the envelope; add a dialect of your own for row bodies`,
			`9: dialects.slack.body: unknown body "text" (want envelope or row)`,
			`10: dialects.slack.method: unsupported method "PATCH" (want POST or PUT)`,
			`13: dialects.slack.headers.Webhook-Signature: header Webhook-Signature is reserved: walhook sets it from the subscription's secret`,
			"14: dialects.slack.headers.Bad Header: invalid header name \"Bad Header\" (want an HTTP token: letters, digits and !#$%&'*+-.^_`|~)",
			`15: dialects.slack.headers.user-agent: header user-agent is reserved: set the dialect's user_agent instead`,
			`17: dialects.zapier.rate_limit: want requests per second to one target, a number from 0 (no limit) to 1000000, got "fast"`,
		}},
		{"bad-batch.yaml", []string{
			`8: dialects.rows.batch: only envelope bodies can be batched (the dialect sends row bodies)`,
			`11: dialects.bulk.batch.max_events: 20000 is too large (want at most 10000)`,
			`12: dialects.bulk.batch.max_wait: 2m is too long (want at most 1m0s)`,
			`13: dialects.bulk.batch.max_bytes: 100 is too small (want at least 1024)`,
			`15: dialects.zero.batch.max_events: 0 is too small (want at least 1)`,
			`15: dialects.zero.batch.max_wait: want a positive duration such as 200ms`,
			`15: dialects.zero.batch.extra: unknown key "extra" (allowed: max_events, max_wait, max_bytes)`,
			`17: dialects.zapier.batch: only envelope bodies can be batched (the dialect sends row bodies)`,
			`19: dialects.scalar.batch: want a mapping such as {max_events: 100, max_wait: 200ms}, got "yes"`,
		}},
		{"bad-ordering.yaml", []string{
			`8: dialects.ordered.ordering: unknown ordering "keys" (want key or none)`,
			`11: dialects.both.batch: a dialect cannot both batch and order by key (a batch is ordered within itself; drop batch: or ordering:)`,
		}},
		{"bad-derived.yaml", []string{
			`6: tables[0].events[0].name: invalid event name "paid" (want noun.verb in lower-case letters, digits and _, e.g. order.paid)`,
			`10: tables[0].events[1].on: unknown operation "upsert" (want insert, update or delete)`,
			`12: tables[0].events[2].when: required: a CEL condition, e.g. new.status == 'paid' && old.status != 'paid' ("true" fires on every update)`,
		}},
		{"bad-owners.yaml", []string{
			`2: owners.query: does not use $1 (walhook passes the owner ids to load as $1, a text[])`,
			`3: owners.watch[0]: "users" is not schema-qualified (want schema.table)`,
			`4: owners.remove_on_delete: want {table: schema.table, column: name}, e.g. remove_on_delete: {table: app.users, column: id}; got "sometimes"`,
		}},
		{"bad-remove-on-delete.yaml", []string{
			`4: owners.remove_on_delete: the boolean form is gone: name the table whose deleted rows are owners and the column holding the owner id, e.g. remove_on_delete: {table: app.users, column: id} (it used the id column of a row deleted from any watched table)`,
		}},
		{"bad-required.yaml", []string{
			`2: tables[0].table: required: the schema-qualified table to map, e.g. public.orders`,
			`4: tables[1].table: "orders" is not schema-qualified (want schema.table, e.g. public.orders)`,
			`4: tables[1].acl: required: a CEL rule deciding which subscribers may see a row ("true" delivers to every subscriber)`,
			`5: tables[1].noun: invalid noun "Order" (want lower-case letters, digits and _, starting with a letter)`,
			`8: tables[2].acl: required: a CEL rule deciding which subscribers may see a row ("true" delivers to every subscriber)`,
		}},
		{"bad-syntax.yaml", []string{
			`3: invalid YAML: did not find expected ',' or ']' in the list or mapping starting here`,
		}},
	}
	files, err := filepath.Glob("../testdata/config/bad-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !slices.ContainsFunc(tests, func(tc struct {
			file string
			want []string
		}) bool {
			return tc.file == filepath.Base(f)
		}) {
			t.Errorf("%s has no test case", f)
		}
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("..", "testdata", "config", tc.file)
			cfg, err := Load(path)
			if err == nil {
				t.Fatalf("Load(%s) = %+v, want an error", path, cfg)
			}
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				want[i] = path + ":" + w
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, want) {
				t.Fatalf("Load() error =\n%s\nwant\n%s", err, strings.Join(want, "\n"))
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // "line: field: problem", file walhook.yaml implied
	}{
		{
			name: "empty file",
			yaml: "",
			want: []string{`walhook.yaml: empty config (want at least a tables: list)`},
		},
		{
			name: "no tables",
			yaml: "delivery: {timeout: 1s}\n",
			want: []string{`walhook.yaml:1: tables: required: the list of tables to map`},
		},
		{
			name: "empty tables",
			yaml: "tables: []\n",
			want: []string{`walhook.yaml:1: tables: empty (want at least one table to map)`},
		},
		{
			name: "top level not a mapping",
			yaml: "- table: public.orders\n",
			want: []string{`walhook.yaml:1: (top level): want a mapping, got a list`},
		},
		{
			name: "tables not a list",
			yaml: "tables: {table: public.orders}\n",
			want: []string{`walhook.yaml:1: tables: want a list of tables, got a mapping`},
		},
		{
			name: "unknown top-level key via anchor",
			yaml: "x-acl: &tenant row.tenant_id in owner.tenants\n" + strings.Replace(minimal, `acl: "true"`, "acl: *tenant", 1),
			want: []string{`walhook.yaml:1: x-acl: unknown key "x-acl" (allowed: owners, tables, delivery, dialects, subscriptions)`},
		},
		{
			name: "repeated key",
			yaml: minimal + "    noun: again\n",
			want: []string{`walhook.yaml:5: tables[0].noun: repeated key "noun" (first at line 3)`},
		},
		{
			name: "merge key",
			yaml: minimal + "  - <<: *orders\n    table: public.orders2\n",
			want: []string{`walhook.yaml: invalid YAML: unknown anchor 'orders' referenced`},
		},
		{
			name: "merge key with anchor",
			yaml: strings.Replace(minimal, "  - table", "  - &orders\n    table", 1) + "  - <<: *orders\n    table: public.orders2\n",
			want: []string{
				`walhook.yaml:6: tables[1].<<: YAML merge keys are not supported; repeat the settings`,
				`walhook.yaml:6: tables[1].noun: required: the event prefix, e.g. order for order.created`,
				`walhook.yaml:6: tables[1].acl: required: a CEL rule deciding which subscribers may see a row ("true" delivers to every subscriber)`,
			},
		},
		{
			name: "second document",
			yaml: minimal + "---\ntables: []\n",
			want: []string{`walhook.yaml:5: a second YAML document (the config is one document; remove the ---)`},
		},
		{
			name: "wrong types",
			yaml: `tables:
  - table: [public, orders]
    noun: order
    key: {id: 1}
    acl: "true"
    events: {name: order.paid}
`,
			want: []string{
				`walhook.yaml:2: tables[0].table: want a string, got a list`,
				`walhook.yaml:2: tables[0].table: required: the schema-qualified table to map, e.g. public.orders`,
				`walhook.yaml:4: tables[0].key: want a list of strings, got a mapping`,
				`walhook.yaml:6: tables[0].events: want a list of derived events, got a mapping`,
			},
		},
		{
			name: "noun with a dot",
			yaml: strings.Replace(minimal, "noun: order", "noun: shop.order", 1),
			want: []string{`walhook.yaml:3: tables[0].noun: invalid noun "shop.order" (want lower-case letters, digits and _, starting with a letter)`},
		},
		{
			name: "three-part table name",
			yaml: strings.Replace(minimal, "public.orders", "db.public.orders", 1),
			want: []string{`walhook.yaml:2: tables[0].table: "db.public.orders" is not schema-qualified (want schema.table, e.g. public.db.public.orders)`},
		},
		{
			name: "missing acl",
			yaml: "tables:\n  - table: public.orders\n    noun: order\n",
			want: []string{`walhook.yaml:2: tables[0].acl: required: a CEL rule deciding which subscribers may see a row ("true" delivers to every subscriber)`},
		},
		{
			name: "duplicate noun",
			yaml: minimal + "  - table: public.orders_archive\n    noun: order\n    verbs: {delete: deleted}\n    acl: \"true\"\n",
			want: []string{
				`walhook.yaml:6: tables[1].noun: event "order.existing" is already produced by tables[0].noun (line 3); event names must be unique`,
				`walhook.yaml:7: tables[1].verbs.delete: event "order.deleted" is already produced by tables[0].noun (line 3); event names must be unique`,
			},
		},
		{
			name: "derived event repeats a standard event",
			yaml: minimal + "    events:\n      - {name: order.updated, on: update, when: 'true'}\n",
			want: []string{`walhook.yaml:6: tables[0].events[0].name: event "order.updated" is already produced by tables[0].noun (line 3); event names must be unique`},
		},
		{
			name: "derived event unknown key and missing fields",
			yaml: minimal + "    events:\n      - name: order.paid\n        if: new.paid\n",
			want: []string{
				`walhook.yaml:6: tables[0].events[0].on: required: the operation to watch (insert, update or delete)`,
				`walhook.yaml:6: tables[0].events[0].when: required: a CEL condition, e.g. new.status == 'paid' && old.status != 'paid' ("true" fires on every change)`,
				`walhook.yaml:7: tables[0].events[0].if: unknown key "if" (allowed: name, on, when)`,
			},
		},
		{
			name: "exclude a key column",
			yaml: strings.Replace(minimal, "    acl:", "    key: [id]\n    columns: {exclude: [id]}\n    acl:", 1),
			want: []string{`walhook.yaml:5: tables[0].columns.exclude[0]: "id" is a key column and cannot be excluded: receivers need the key to identify the row`},
		},
		{
			name: "empty key",
			yaml: strings.Replace(minimal, "    acl:", "    key: []\n    acl:", 1),
			want: []string{`walhook.yaml:4: tables[0].key: empty (omit key to use the primary key)`},
		},
		{
			name: "no events at all",
			yaml: strings.Replace(minimal, "    acl:", "    verbs: {update: \"\"}\n    acl:", 1),
			want: []string{`walhook.yaml:4: tables[0].verbs: the table produces no events (no verbs and no derived events); remove it or add some`},
		},
		{
			name: "retry empty",
			yaml: minimal + "delivery:\n  retry: []\n",
			want: []string{`walhook.yaml:6: delivery.retry: empty (want the delay before each attempt, e.g. [0s, 5s, 5m]; at least one)`},
		},
		{
			name: "zero timeout and float count",
			yaml: minimal + "delivery:\n  timeout: 0s\n  max_per_host: 1.5\n",
			want: []string{
				`walhook.yaml:6: delivery.timeout: must be more than 0s`,
				`walhook.yaml:7: delivery.max_per_host: want a whole number, got a number (1.5)`,
			},
		},
		{
			name: "header problems",
			yaml: minimal + "dialects:\n  mine:\n    headers:\n      X-A: one\n      x-a: two\n      Content-Type: text/plain\n      X-B: \"a\\r\\nX-Evil: 1\"\n",
			want: []string{
				`walhook.yaml:9: dialects.mine.headers.x-a: header x-a repeats the header at line 8 (header names ignore case)`,
				`walhook.yaml:10: dialects.mine.headers.Content-Type: header Content-Type is reserved: walhook always sends application/json`,
				`walhook.yaml:11: dialects.mine.headers.X-B: value contains control characters`,
			},
		},
		{
			name: "dialect name",
			yaml: minimal + "dialects:\n  My Dialect: {body: row}\n",
			want: []string{`walhook.yaml:6: dialects.My Dialect: invalid dialect name "My Dialect" (want lower-case letters, digits, _ and -, starting with a letter)`},
		},
		{
			name: "owners without query",
			yaml: "owners:\n  watch: [app.users]\n" + minimal,
			want: []string{`walhook.yaml:2: owners.query: required when owners is set: SQL taking the owner ids as $1`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("walhook.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse() = %+v, want errors %q", cfg, tc.want)
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, tc.want) {
				t.Fatalf("Parse() error =\n%s\nwant\n%s", err, strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestErrorsInspect(t *testing.T) {
	_, err := Parse("walhook.yaml", []byte(strings.Replace(minimal, "verbs", "", 1)+"    verbs: {upsert: saved}\n"))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse() error %T, want Errors", err)
	}
	want := Errors{{File: "walhook.yaml", Line: 5, Field: "tables[0].verbs.upsert", Problem: `unknown operation "upsert" (want insert, update, delete, truncate or existing)`}}
	if !reflect.DeepEqual(errs, want) {
		t.Fatalf("Parse() error = %#v, want %#v", errs, want)
	}
	var one ConfigError
	if !errors.As(err, &one) || one.Field != "tables[0].verbs.upsert" {
		t.Fatalf("errors.As(ConfigError) = %+v, want the verbs error", one)
	}
}

func TestLoadUnreadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.yaml")
	_, err := Load(path)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load() error = %v, want a not-exist error naming %s", err, path)
	}
}

func TestCheckCatalog(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		cat  func(Catalog)
		want []string
	}{
		{
			name: "example matches",
			want: nil,
		},
		{
			name: "unknown table with case hint",
			yaml: strings.Replace(minimal, "public.orders", "public.Orders", 1),
			want: []string{`walhook.yaml:2: tables[0].table: table public.Orders does not exist; did you mean "public.orders"?`},
		},
		{
			name: "table in another schema",
			yaml: strings.Replace(minimal, "public.orders", "shop.customers", 1),
			want: []string{`walhook.yaml:2: tables[0].table: table shop.customers does not exist; did you mean "public.customers"?`},
		},
		{
			name: "unknown columns",
			yaml: `tables:
  - table: public.orders
    noun: order
    key: [id, order_no]
    site: tenant
    columns:
      exclude: [internal_notes, secret]
    acl: "true"
`,
			want: []string{
				`walhook.yaml:4: tables[0].key[1]: column "order_no" does not exist in public.orders (columns: id, customer_id, tenant_id, tenant_path, status, total, internal_note, created_at, paid_at)`,
				`walhook.yaml:5: tables[0].site: column "tenant" does not exist in public.orders (columns: id, customer_id, tenant_id, tenant_path, status, total, internal_note, created_at, paid_at)`,
				`walhook.yaml:7: tables[0].columns.exclude[0]: column "internal_notes" does not exist in public.orders; did you mean "internal_note"?`,
				`walhook.yaml:7: tables[0].columns.exclude[1]: column "secret" does not exist in public.orders (columns: id, customer_id, tenant_id, tenant_path, status, total, internal_note, created_at, paid_at)`,
			},
		},
		{
			name: "no primary key and no key",
			yaml: minimal,
			cat: func(c Catalog) {
				for i := range c["public.orders"] {
					c["public.orders"][i].PrimaryKey = false
				}
			},
			want: []string{`walhook.yaml:2: tables[0].key: public.orders has no primary key; name the columns that identify a row, e.g. key: [id]`},
		},
		{
			name: "no primary key but key given",
			yaml: strings.Replace(minimal, "    acl:", "    key: [id]\n    acl:", 1),
			cat: func(c Catalog) {
				for i := range c["public.orders"] {
					c["public.orders"][i].PrimaryKey = false
				}
			},
		},
		{
			name: "filter drops the primary key",
			yaml: strings.Replace(minimal, "    acl:", "    columns: {include: [status]}\n    acl:", 1),
			want: []string{`walhook.yaml:4: tables[0].columns.include: leaves out key column "id": receivers need the key to identify the row`},
		},
		{
			name: "unknown watched table",
			yaml: "owners:\n  query: SELECT id FROM app.users WHERE id = ANY($1)\n  watch: [app.user]\n" + minimal,
			want: []string{`walhook.yaml:3: owners.watch[0]: table app.user does not exist; did you mean "app.users"?`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var (
				cfg *Config
				err error
			)
			if tc.yaml == "" {
				cfg, err = Load(examplePath)
			} else {
				cfg, err = Parse("walhook.yaml", []byte(tc.yaml))
			}
			if err != nil {
				t.Fatalf("Parse() error: %v", err)
			}
			cat := exampleCatalog()
			if tc.cat != nil {
				tc.cat(cat)
			}
			err = cfg.CheckCatalog(cat)
			var got []string
			if err != nil {
				got = strings.Split(err.Error(), "\n")
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("CheckCatalog() =\n%v\nwant\n%s", err, strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestRemoveOnDelete(t *testing.T) {
	t.Parallel()
	const head = "owners:\n  query: SELECT id::text AS id FROM app.users WHERE id::text = ANY($1)\n  watch: [app.users, app.memberships]\n"
	const tables = "tables:\n  - table: public.orders\n    noun: order\n    acl: 'true'\n"
	tests := []struct {
		name, line string
		want       string // "" for success
	}{
		{"table and column", "  remove_on_delete: {table: app.users, column: id}\n", ""},
		{"table not watched", "  remove_on_delete: {table: app.people, column: id}\n",
			"walhook.yaml:4: owners.remove_on_delete.table: app.people is not in owners.watch: deletes reach walhook only from watched tables; add it to owners.watch"},
		{"no column", "  remove_on_delete: {table: app.users}\n",
			"walhook.yaml:4: owners.remove_on_delete.column: required: the column of that table holding the owner id, e.g. id"},
		{"false", "  remove_on_delete: false\n",
			"walhook.yaml:4: owners.remove_on_delete: the boolean form is gone: leave remove_on_delete out to keep subscriptions of deleted owners"},
		{"unknown key", "  remove_on_delete: {table: app.users, colum: id}\n",
			`walhook.yaml:4: owners.remove_on_delete.colum: unknown key "colum" (allowed: table, column); did you mean "column"?`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("walhook.yaml", []byte(head+tc.line+tables))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse() = %v, want %q", err, tc.want)
			}
		})
	}

	cfg, err := Parse("walhook.yaml", []byte(head+"  remove_on_delete: {table: app.users, column: user_id}\n"+tables))
	if err != nil {
		t.Fatal(err)
	}
	cat := Catalog{"public.orders": {{Name: "id", PrimaryKey: true}}, "app.users": {{Name: "id"}, {Name: "name"}},
		"app.memberships": {{Name: "id"}, {Name: "user_id"}}}
	err = cfg.CheckCatalog(cat)
	want := `walhook.yaml:4: owners.remove_on_delete.column: column "user_id" does not exist in app.users (columns: id, name)`
	if err == nil || err.Error() != want {
		t.Fatalf("CheckCatalog() = %v, want %s", err, want)
	}
}

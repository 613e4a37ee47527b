package mapping

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Dialect names that always exist. Their defaults, like every delivery
// and dialect default, are package deliver's.
const (
	DialectDefault = "default" // envelope body
	DialectZapier  = "zapier"  // row body
)

// Body shapes a dialect can send.
const (
	BodyEnvelope = "envelope" // {"id", "event", "occurred_at", "site", "data", "previous"}
	BodyRow      = "row"      // the row object alone
)

// VerbExisting is the operation a backfill's rows are: `verbs:` may rename
// its event (`existing: current`); every table offers it, as
// <noun>.existing by default, whatever else `verbs:` says.
const VerbExisting = "existing"

// VerbTruncate is the operation of a TRUNCATE. Off by default: a table
// produces <noun>.<verb> for a TRUNCATE only when `verbs:` names it
// (`truncate: truncated`), one event per table emptied and per matching
// subscription, without a row.
const VerbTruncate = "truncate"

// DefaultVerbs returns the verbs used when a table sets no `verbs:`.
func DefaultVerbs() map[string]string {
	return map[string]string{"insert": "created", "update": "updated", "delete": "deleted"}
}

// Config is a parsed and validated walhook.yaml: what the file says. Table
// defaults (verbs) are filled by Parse; delivery and dialect defaults are
// package deliver's (deliver.SettingsFrom, deliver.Dialects), applied there
// in one place.
type Config struct {
	File     string // path it was loaded from
	Owners   *Owners
	Tables   []*TableConfig
	Delivery Delivery
	// Dialects always holds DialectDefault and DialectZapier.
	Dialects map[string]*DialectConfig
	// Subscriptions are the static subscriptions, in config order.
	Subscriptions []*StaticSubscription
}

// Owners tells how to load a subscription owner's attributes for ACL rules.
// Nil when the config has no `owners:` block; rules then see only owner.id.
type Owners struct {
	// Query takes the owner ids as $1 (text[]) and returns one row per owner
	// with an `id` column; the other columns become owner attributes.
	Query string
	// Watch lists schema-qualified tables whose changes refresh cached owners.
	Watch []string
	// Keys names, per watched table, the column holding the owner id of a
	// row (`keys: {app.users: id, app.memberships: user_id}`): a change to
	// that table refreshes the attributes of those owners only. A watched
	// table without a key refreshes every subscribed owner.
	Keys map[string]string
	// RemoveOnDelete, when set, removes an owner's subscriptions when a row
	// is deleted from its Table: the row's Column holds the owner id.
	RemoveOnDelete *RemoveOnDelete
	Line           int // line of the owners block
	QueryLine      int // line of the query, for SQL errors found at run time

	watchLines []int
}

// RemoveOnDelete names the table whose deleted rows are owners, and the
// column holding the owner id: `remove_on_delete: {table: app.users,
// column: id}`. Table is one of owners.watch.
type RemoveOnDelete struct {
	Table  string
	Column string
	Line   int // line of the remove_on_delete key
	// ColumnLine is the line of the column setting, for CheckCatalog.
	ColumnLine int
}

// TableConfig maps one table to events.
type TableConfig struct {
	Table string   // schema.table
	Noun  string   // event prefix: noun.verb
	Key   []string // columns identifying a row; empty means the primary key
	Site  string   // optional column holding the row's site path
	// Verbs maps an operation (insert, update, delete, and the optional
	// VerbTruncate and VerbExisting) to its verb. An operation that is
	// absent or maps to "" produces no standard event (existing: always
	// <noun>.existing unless renamed; truncate: none unless named). Parse
	// sets DefaultVerbs when the config has no `verbs:`; a `verbs:` block
	// replaces the default map entirely, so `verbs: {insert: created}` means
	// inserts only. New treats a nil map as DefaultVerbs.
	Verbs   map[string]string
	Columns Columns
	// ACL is a CEL rule, compiled by package acl; "true" delivers to every
	// subscriber.
	ACL     string
	ACLLine int
	// Payload is an optional CEL expression building the body's data from
	// the row (a map), compiled by package acl; empty sends the row's columns.
	Payload     string
	PayloadLine int
	Events      []*DerivedEvent
	Line        int // line of the table's entry

	// lines holds the line of each setting by field path relative to the
	// table ("key[0]", "columns.exclude", "events[1].on"), so checks made after
	// parsing (validation, CheckCatalog) can point at the exact line.
	lines map[string]int
}

// Columns selects the columns sent in a row. At most one of the lists is set;
// both empty sends every column.
type Columns struct {
	Include []string
	Exclude []string
}

// DerivedEvent is an extra event a table produces when its CEL condition
// holds for a change, e.g. order.paid on an update that sets status to paid.
type DerivedEvent struct {
	Name     string
	On       string // insert, update or delete
	When     string // CEL, compiled by another package
	Line     int    // line of the event's entry
	WhenLine int
}

// Delivery tunes the HTTP sender.
//
// A zero field was not set: deliver.SettingsFrom applies its default.
type Delivery struct {
	Timeout time.Duration
	// Retry is the delay before each attempt; its length is the number of
	// attempts. Nil when not set.
	Retry       []time.Duration
	MaxInFlight int
	MaxPerHost  int
	// History is how many finished attempts are kept per subscription.
	History int
}

// DialectConfig shapes the HTTP request for subscriptions that choose it.
type DialectConfig struct {
	Body    string // BodyEnvelope or BodyRow
	Headers map[string]string
	Method  string // POST or PUT
	// UserAgent replaces walhook/<version> when set.
	UserAgent string
	// RateLimit caps requests per second to one target URL; 0 is no cap,
	// nil is the dialect's default (deliver).
	RateLimit *float64
	// Batch sends many events in one request; nil sends one per request.
	Batch *BatchConfig
	// Ordering is OrderingKey to send one subscription's events of one row
	// key one after another in commit order; "" (none) sends them as they
	// come.
	Ordering string
	Line     int // 0 for a built-in dialect the config does not mention
}

// Dialect orderings.
const (
	OrderingNone = "none"
	OrderingKey  = "key"
)

// BatchConfig is a dialect's batch: block. Zero fields take deliver's
// defaults.
type BatchConfig struct {
	MaxEvents int
	MaxWait   time.Duration
	MaxBytes  int
	Line      int
}

// Batch limits a config may set.
const (
	MaxBatchEvents = 10_000
	MaxBatchWait   = time.Minute
	MaxBatchBytes  = 16 << 20
)

var (
	nounRE    = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	eventRE   = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)
	dialectRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)
)

// reservedHeaders are set by walhook itself (or by net/http) and may not be
// overridden by a dialect: a receiver verifying signatures must be able to
// trust them. The value says what to do instead.
var reservedHeaders = map[string]string{
	"content-type":         "walhook always sends application/json",
	"webhook-id":           "walhook sets it to the event id",
	"webhook-timestamp":    "walhook sets it when signing",
	"webhook-signature":    "walhook sets it from the subscription's secret",
	"webhook-subscription": "walhook sets it to the subscription id",
	"user-agent":           "set the dialect's user_agent instead",
	"host":                 "it comes from the target URL",
	"content-length":       "it is computed from the body",
	"transfer-encoding":    "it is chosen by the HTTP client",
	"connection":           "it is managed by the HTTP client",
}

// Load reads and parses the config file at path. Reading the file is the only
// I/O this package does.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// os errors already name the path: "open walhook.yaml: no such file".
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates a config. file names the source in errors. On
// failure the error is an Errors listing every problem found.
func Parse(file string, data []byte) (*Config, error) {
	p := &parser{collector: collector{file: file}}
	root := p.document(data)
	cfg := &Config{File: file}
	p.config(cfg, root)
	// Semantic checks of tables run on the struct, not the YAML, so New can
	// repeat them for a Config built in code.
	p.errs = append(p.errs, validateTables(file, cfg.Tables)...)
	p.errs = append(p.errs, checkStatic(file, cfg)...)
	if err := p.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

type parser struct {
	collector
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parserContextErrors are the YAML parser errors reported at the start of the
// enclosing collection.
var parserContextErrors = []string{
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected '-' indicator",
	"did not find expected key",
}

// document decodes the single YAML document in data, returning its root
// node, or nil after recording why there is none.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.add(0, "", "empty config (want at least a tables: list)")
		} else {
			p.yamlError(err)
		}
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		p.yamlError(err)
	default:
		p.add(extra.Line, "", "a second YAML document (the config is one document; remove the ---)")
	}
	if len(doc.Content) == 0 {
		p.add(0, "", "empty config (want at least a tables: list)")
		return nil
	}
	return doc.Content[0]
}

// yamlError turns a YAML syntax error into a ConfigError with its line.
func (p *parser) yamlError(err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		problem := m[2]
		// For these parser errors the YAML library reports the 0-based line
		// where the enclosing list or mapping starts, not where the problem
		// is: convert it to 1-based and say what the line is.
		if slices.Contains(parserContextErrors, problem) {
			line++
			problem += " in the list or mapping starting here"
		}
		p.add(line, "", "invalid YAML: "+problem)
		return
	}
	p.add(0, "", "invalid YAML: "+strings.TrimPrefix(msg, "yaml: "))
}

func (p *parser) config(cfg *Config, root *yaml.Node) {
	cfg.Dialects = map[string]*DialectConfig{
		DialectDefault: {Body: BodyEnvelope},
		DialectZapier:  {Body: BodyRow},
	}
	if root == nil {
		return
	}
	sawTables := false
	p.fields(root, "", []string{"owners", "tables", "delivery", "dialects", "subscriptions"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "owners":
			cfg.Owners = p.owners(k, v)
		case "tables":
			sawTables = true
			cfg.Tables = p.tables(v)
			if len(cfg.Tables) == 0 && (isMissing(v) || v.Kind == yaml.SequenceNode) {
				p.add(k.Line, "tables", "empty (want at least one table to map)")
			}
		case "delivery":
			p.delivery(&cfg.Delivery, v)
		case "dialects":
			p.dialects(cfg.Dialects, v)
		case "subscriptions":
			cfg.Subscriptions = p.subscriptions(v)
		}
	})
	if !sawTables && root.Kind == yaml.MappingNode {
		p.add(root.Line, "tables", "required: the list of tables to map")
	}
}

func (p *parser) owners(k, v *yaml.Node) *Owners {
	o := &Owners{Line: k.Line}
	if isMissing(v) {
		p.add(k.Line, "owners.query", "required when owners is set: SQL taking the owner ids as $1")
		return o
	}
	sawQuery := false
	var keyLines map[string]int
	p.fields(v, "owners", []string{"query", "watch", "keys", "remove_on_delete"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "query":
			sawQuery = true
			o.Query, _ = p.str(v, "owners.query")
			o.QueryLine = v.Line
			switch {
			case strings.TrimSpace(o.Query) == "":
				p.add(v.Line, "owners.query", "empty (want SQL taking the owner ids as $1)")
			case !strings.Contains(o.Query, "$1"):
				p.add(v.Line, "owners.query", "does not use $1 (walhook passes the owner ids to load as $1, a text[])")
			}
		case "watch":
			var lines []int
			o.Watch, lines = p.strList(v, "owners.watch")
			o.watchLines = lines
			for i, t := range o.Watch {
				if !qualified(t) {
					p.add(lines[i], index("owners.watch", i), fmt.Sprintf("%q is not schema-qualified (want schema.table)", t))
				}
			}
		case "keys":
			o.Keys, keyLines = map[string]string{}, map[string]int{}
			p.entries(v, "owners.keys", func(table string, k, v *yaml.Node) {
				o.Keys[table], _ = p.str(v, "owners.keys."+table)
				keyLines[table] = k.Line
				if o.Keys[table] == "" {
					p.add(k.Line, "owners.keys."+table, "empty (want the column holding the owner id, e.g. id)")
				}
			})
		case "remove_on_delete":
			o.RemoveOnDelete = p.removeOnDelete(k, v)
		}
	})
	for _, t := range slices.Sorted(maps.Keys(o.Keys)) {
		if !slices.Contains(o.Watch, t) {
			p.add(keyLines[t], "owners.keys."+t, fmt.Sprintf("%s is not in owners.watch", t))
		}
	}
	if !sawQuery && v.Kind == yaml.MappingNode {
		p.add(v.Line, "owners.query", "required when owners is set: SQL taking the owner ids as $1")
	}
	if r := o.RemoveOnDelete; r != nil && r.Table != "" && !slices.Contains(o.Watch, r.Table) {
		p.add(r.Line, "owners.remove_on_delete.table", fmt.Sprintf("%s is not in owners.watch: deletes reach walhook only from watched tables; add it to owners.watch", r.Table))
	}
	return o
}

// removeOnDelete reads `remove_on_delete: {table: app.users, column: id}`.
// The boolean form, which took the id column of a row deleted from any
// watched table as an owner id, is refused with the way to write it.
func (p *parser) removeOnDelete(k, v *yaml.Node) *RemoveOnDelete {
	const field = "owners.remove_on_delete"
	if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!bool" {
		if v.Value == "false" || v.Value == "False" || v.Value == "FALSE" {
			p.add(v.Line, field, "the boolean form is gone: leave remove_on_delete out to keep subscriptions of deleted owners")
			return nil
		}
		p.add(v.Line, field, "the boolean form is gone: name the table whose deleted rows are owners and the column holding the owner id, "+
			"e.g. remove_on_delete: {table: app.users, column: id} (it used the id column of a row deleted from any watched table)")
		return nil
	}
	if isMissing(v) || v.Kind != yaml.MappingNode {
		p.add(v.Line, field, "want {table: schema.table, column: name}, e.g. remove_on_delete: {table: app.users, column: id}; got "+describe(v))
		return nil
	}
	r := &RemoveOnDelete{Line: k.Line}
	p.fields(v, field, []string{"table", "column"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "table":
			r.Table, _ = p.str(v, field+".table")
			if !qualified(r.Table) {
				p.add(v.Line, field+".table", fmt.Sprintf("%q is not schema-qualified (want schema.table, one of owners.watch)", r.Table))
			}
		case "column":
			r.Column, _ = p.str(v, field+".column")
			r.ColumnLine = v.Line
		}
	})
	if r.Table == "" {
		p.add(r.Line, field+".table", "required: the watched table whose deleted rows are owners, e.g. app.users")
	}
	if r.Column == "" {
		p.add(r.Line, field+".column", "required: the column of that table holding the owner id, e.g. id")
	}
	return r
}

var tableKeys = []string{"table", "noun", "key", "site", "verbs", "columns", "acl", "events", "payload"}

func (p *parser) tables(v *yaml.Node) []*TableConfig {
	if isMissing(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.add(v.Line, "tables", "want a list of tables, got "+describe(v))
		return nil
	}
	tables := make([]*TableConfig, 0, len(v.Content))
	for i, item := range v.Content {
		item = resolve(item)
		path := index("tables", i)
		t := &TableConfig{Line: item.Line, lines: map[string]int{}}
		tables = append(tables, t)
		p.fields(item, path, tableKeys, func(key string, k, v *yaml.Node) {
			t.lines[key] = k.Line
			f := path + "." + key
			switch key {
			case "table":
				t.Table, _ = p.str(v, f)
			case "noun":
				t.Noun, _ = p.str(v, f)
			case "key":
				var lines []int
				t.Key, lines = p.strList(v, f)
				if t.Key == nil && !isMissing(v) && v.Kind == yaml.SequenceNode {
					t.Key = []string{} // `key: []`, refused by validateTables
				}
				setLines(t.lines, "key", lines)
			case "site":
				t.Site, _ = p.str(v, f)
			case "verbs":
				t.Verbs = map[string]string{}
				p.entries(v, f, func(op string, k, v *yaml.Node) {
					t.Verbs[op], _ = p.str(v, f+"."+op)
					t.lines["verbs."+op] = k.Line
				})
			case "columns":
				p.fields(v, f, []string{"include", "exclude"}, func(key string, k, v *yaml.Node) {
					var lines []int
					if key == "include" {
						t.Columns.Include, lines = p.strList(v, f+"."+key)
					} else {
						t.Columns.Exclude, lines = p.strList(v, f+"."+key)
					}
					t.lines["columns."+key] = k.Line
					setLines(t.lines, "columns."+key, lines)
				})
			case "acl":
				t.ACL, _ = p.str(v, f)
				t.ACLLine = v.Line
			case "payload":
				t.Payload, _ = p.str(v, f)
				t.PayloadLine = v.Line
			case "events":
				t.Events = p.events(t, v, f)
			}
		})
		if t.Verbs == nil {
			t.Verbs = DefaultVerbs()
		}
	}
	return tables
}

func (p *parser) events(t *TableConfig, v *yaml.Node, path string) []*DerivedEvent {
	if isMissing(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.add(v.Line, path, "want a list of derived events, got "+describe(v))
		return nil
	}
	var events []*DerivedEvent
	for j, item := range v.Content {
		item = resolve(item)
		e := &DerivedEvent{Line: item.Line}
		events = append(events, e)
		ep := index(path, j)
		rel := index("events", j) // key into t.lines
		p.fields(item, ep, []string{"name", "on", "when"}, func(key string, k, v *yaml.Node) {
			t.lines[rel+"."+key] = v.Line
			switch key {
			case "name":
				e.Name, _ = p.str(v, ep+".name")
			case "on":
				e.On, _ = p.str(v, ep+".on")
			case "when":
				e.When, _ = p.str(v, ep+".when")
				e.WhenLine = v.Line
			}
		})
	}
	return events
}

func (p *parser) delivery(d *Delivery, v *yaml.Node) {
	keys := []string{"timeout", "retry", "max_in_flight", "max_per_host", "history"}
	p.fields(v, "delivery", keys, func(key string, k, v *yaml.Node) {
		f := "delivery." + key
		switch key {
		case "timeout":
			if t, ok := p.duration(v, f); ok {
				if t == 0 {
					p.add(v.Line, f, "must be more than 0s")
				}
				d.Timeout = t
			}
		case "retry":
			if isMissing(v) || (v.Kind == yaml.SequenceNode && len(v.Content) == 0) {
				p.add(v.Line, f, "empty (want the delay before each attempt, e.g. [0s, 5s, 5m]; at least one)")
				return
			}
			if v.Kind != yaml.SequenceNode {
				p.add(v.Line, f, "want a list of durations, got "+describe(v))
				return
			}
			d.Retry = d.Retry[:0]
			for i, item := range v.Content {
				if t, ok := p.duration(resolve(item), index(f, i)); ok {
					d.Retry = append(d.Retry, t)
				}
			}
		case "max_in_flight":
			d.MaxInFlight = p.count(v, f, 1)
		case "max_per_host":
			d.MaxPerHost = p.count(v, f, 1)
		case "history":
			d.History = p.count(v, f, 1)
		}
	})
}

func (p *parser) dialects(dialects map[string]*DialectConfig, v *yaml.Node) {
	p.entries(v, "dialects", func(name string, k, v *yaml.Node) {
		path := "dialects." + name
		if !dialectRE.MatchString(name) {
			p.add(k.Line, path, fmt.Sprintf("invalid dialect name %q (want lower-case letters, digits, _ and -, starting with a letter)", name))
		}
		d, builtin := dialects[name]
		if !builtin {
			d = &DialectConfig{Body: BodyEnvelope}
			dialects[name] = d
		}
		d.Line = k.Line
		p.fields(v, path, []string{"body", "headers", "method", "user_agent", "rate_limit", "batch", "ordering"}, func(key string, k, v *yaml.Node) {
			f := path + "." + key
			switch key {
			case "body":
				body, _ := p.str(v, f)
				switch {
				case body != BodyEnvelope && body != BodyRow:
					p.add(v.Line, f, fmt.Sprintf("unknown body %q (want envelope or row)", body))
				case name == DialectDefault && body != BodyEnvelope:
					p.add(v.Line, f, "the default dialect always sends the envelope; add a dialect of your own for row bodies")
				default:
					d.Body = body
				}
			case "method":
				m, _ := p.str(v, f)
				switch up := strings.ToUpper(m); up {
				case "POST", "PUT":
					d.Method = up
				default:
					p.add(v.Line, f, fmt.Sprintf("unsupported method %q (want POST or PUT)", m))
				}
			case "user_agent":
				d.UserAgent, _ = p.str(v, f)
				if !validHeaderValue(d.UserAgent) {
					p.add(v.Line, f, "contains control characters")
				}
			case "headers":
				d.Headers = p.headers(v, f)
			case "rate_limit":
				var r float64
				if err := v.Decode(&r); err != nil || r < 0 || r > 1e6 {
					p.add(v.Line, f, fmt.Sprintf("want requests per second to one target, a number from 0 (no limit) to 1000000, got %s", describe(v)))
				} else {
					d.RateLimit = &r
				}
			case "batch":
				d.Batch = p.batch(v, f)
			case "ordering":
				o, _ := p.str(v, f)
				switch o {
				case OrderingKey:
					d.Ordering = o
				case OrderingNone:
				default:
					p.add(v.Line, f, fmt.Sprintf("unknown ordering %q (want key or none)", o))
				}
			}
		})
		if d.Batch != nil && d.Body != BodyEnvelope {
			p.add(d.Batch.Line, path+".batch", "only envelope bodies can be batched (the dialect sends row bodies)")
		}
		if d.Batch != nil && d.Ordering == OrderingKey {
			p.add(d.Batch.Line, path+".batch", "a dialect cannot both batch and order by key (a batch is ordered within itself; drop batch: or ordering:)")
		}
	})
}

// batch reads a dialect's batch: {max_events, max_wait, max_bytes}.
func (p *parser) batch(v *yaml.Node, path string) *BatchConfig {
	b := &BatchConfig{Line: v.Line}
	if v.Kind != yaml.MappingNode {
		p.add(v.Line, path, "want a mapping such as {max_events: 100, max_wait: 200ms}, got "+describe(v))
		return b
	}
	p.fields(v, path, []string{"max_events", "max_wait", "max_bytes"}, func(key string, k, v *yaml.Node) {
		f := path + "." + key
		switch key {
		case "max_events":
			if n := p.count(v, f, 1); n > MaxBatchEvents {
				p.add(v.Line, f, fmt.Sprintf("%d is too large (want at most %d)", n, MaxBatchEvents))
			} else {
				b.MaxEvents = n
			}
		case "max_wait":
			d, ok := p.duration(v, f)
			switch {
			case !ok:
			case d > MaxBatchWait:
				p.add(v.Line, f, fmt.Sprintf("%s is too long (want at most %s)", v.Value, MaxBatchWait))
			case d == 0:
				p.add(v.Line, f, "want a positive duration such as 200ms")
			default:
				b.MaxWait = d
			}
		case "max_bytes":
			if n := p.count(v, f, 1024); n > MaxBatchBytes {
				p.add(v.Line, f, fmt.Sprintf("%d is too large (want at most %d, 16 MiB)", n, MaxBatchBytes))
			} else {
				b.MaxBytes = n
			}
		}
	})
	return b
}

func (p *parser) headers(v *yaml.Node, path string) map[string]string {
	headers := map[string]string{}
	seen := map[string]int{} // lower-cased name -> line, since HTTP names ignore case
	p.entries(v, path, func(name string, k, v *yaml.Node) {
		f := path + "." + name
		value, _ := p.str(v, f)
		lower := strings.ToLower(name)
		switch {
		case !validToken(name):
			p.add(k.Line, f, fmt.Sprintf("invalid header name %q (want an HTTP token: letters, digits and !#$%%&'*+-.^_`|~)", name))
		case reservedHeaders[lower] != "":
			p.add(k.Line, f, fmt.Sprintf("header %s is reserved: %s", name, reservedHeaders[lower]))
		case seen[lower] != 0:
			p.add(k.Line, f, fmt.Sprintf("header %s repeats the header at line %d (header names ignore case)", name, seen[lower]))
		case !validHeaderValue(value):
			p.add(v.Line, f, "value contains control characters")
		default:
			headers[name] = value
		}
		if seen[lower] == 0 {
			seen[lower] = k.Line
		}
	})
	return headers
}

// fields walks the mapping v, reporting unknown and repeated keys, and calls
// fn for each allowed key in document order. A missing (null) value is an
// empty mapping.
func (p *parser) fields(v *yaml.Node, path string, allowed []string, fn func(key string, k, v *yaml.Node)) {
	p.entries(v, path, func(key string, k, val *yaml.Node) {
		if !slices.Contains(allowed, key) {
			p.add(k.Line, join(path, key), fmt.Sprintf("unknown key %q (allowed: %s)%s", key, strings.Join(allowed, ", "), suggest(key, allowed)))
			return
		}
		fn(key, k, val)
	})
}

// entries walks the mapping v with keys of the config's choosing (dialect
// names, headers, verbs), reporting repeated keys.
func (p *parser) entries(v *yaml.Node, path string, fn func(key string, k, v *yaml.Node)) {
	v = resolve(v)
	if isMissing(v) {
		return
	}
	if v.Kind != yaml.MappingNode {
		p.add(v.Line, pathOr(path), "want a mapping, got "+describe(v))
		return
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := resolve(v.Content[i]), resolve(v.Content[i+1])
		key := k.Value
		switch {
		case k.Kind != yaml.ScalarNode:
			p.add(k.Line, pathOr(path), "keys must be plain strings, got "+describe(k))
			continue
		case key == "<<":
			p.add(k.Line, join(path, key), "YAML merge keys are not supported; repeat the settings")
			continue
		case seen[key] != 0:
			p.add(k.Line, join(path, key), fmt.Sprintf("repeated key %q (first at line %d)", key, seen[key]))
			continue
		}
		seen[key] = k.Line
		fn(key, k, val)
	}
}

// str reads a scalar as a string. Any scalar is accepted so `acl: true` means
// the CEL expression "true"; null is "".
func (p *parser) str(v *yaml.Node, path string) (string, bool) {
	if isMissing(v) {
		return "", true
	}
	if v.Kind != yaml.ScalarNode {
		p.add(v.Line, path, "want a string, got "+describe(v))
		return "", false
	}
	return v.Value, true
}

// strList reads a list of strings, with the line of each. A single string is
// taken as a list of one, so `key: id` works like `key: [id]`.
func (p *parser) strList(v *yaml.Node, path string) ([]string, []int) {
	if isMissing(v) {
		return nil, nil
	}
	if v.Kind == yaml.ScalarNode {
		return []string{v.Value}, []int{v.Line}
	}
	if v.Kind != yaml.SequenceNode {
		p.add(v.Line, path, "want a list of strings, got "+describe(v))
		return nil, nil
	}
	var (
		out   []string
		lines []int
	)
	for i, item := range v.Content {
		item = resolve(item)
		if item.Kind != yaml.ScalarNode || item.ShortTag() == "!!null" {
			p.add(item.Line, index(path, i), "want a string, got "+describe(item))
			continue
		}
		out = append(out, item.Value)
		lines = append(lines, item.Line)
	}
	return out, lines
}

// count reads a whole number of at least least.
func (p *parser) count(v *yaml.Node, path string, least int) int {
	var n int
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || v.Decode(&n) != nil {
		p.add(v.Line, path, "want a whole number, got "+describe(v))
		return 0
	}
	switch {
	case n < 0:
		p.add(v.Line, path, fmt.Sprintf("negative number %d (want at least %d)", n, least))
	case n < least:
		p.add(v.Line, path, fmt.Sprintf("%d is too small (want at least %d)", n, least))
	}
	return n
}

func (p *parser) duration(v *yaml.Node, path string) (time.Duration, bool) {
	if v.Kind != yaml.ScalarNode || isMissing(v) {
		p.add(v.Line, path, "want a duration such as 30s, 5m or 2h, got "+describe(v))
		return 0, false
	}
	d, err := time.ParseDuration(v.Value)
	if err != nil {
		p.add(v.Line, path, fmt.Sprintf("invalid duration %q (want e.g. 30s, 5m or 2h)", v.Value))
		return 0, false
	}
	if d < 0 {
		p.add(v.Line, path, fmt.Sprintf("negative duration %s", v.Value))
		return 0, false
	}
	return d, true
}

// resolve follows YAML aliases to the anchored node.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isMissing(v *yaml.Node) bool {
	return v == nil || (v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null")
}

func describe(v *yaml.Node) string {
	switch v.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		switch v.ShortTag() {
		case "!!null":
			return "nothing"
		case "!!bool":
			return "a boolean"
		case "!!int", "!!float":
			return "a number (" + v.Value + ")"
		}
		return strconv.Quote(v.Value)
	}
	return "something else"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func pathOr(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func setLines(lines map[string]int, key string, ls []int) {
	for i, l := range ls {
		lines[index(key, i)] = l
	}
}

// qualified reports whether name is schema.table with both parts non-empty.
func qualified(name string) bool {
	schema, table, ok := strings.Cut(name, ".")
	return ok && schema != "" && table != "" && !strings.Contains(table, ".")
}

// validToken reports whether s is an RFC 9110 token, the syntax of a header
// name.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue rejects control characters, which would let a config
// value split or smuggle headers.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

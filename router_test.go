package walhook

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/metrics"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
)

// The router's tests need no database, HTTP or slot: changes are built by
// hand, owners come from a map, deliveries are captured.

// capture is a submitter that keeps every request and finishes it at once.
type capture struct{ got []*deliver.Request }

func (c *capture) Submit(_ context.Context, r *deliver.Request) error {
	c.got = append(c.got, r)
	r.Done()
	return nil
}

// ownerMap is an acl.Source over a map; err fails every load.
type ownerMap struct {
	owners map[string]map[string]any
	err    error
}

func (o ownerMap) LoadOwners(_ context.Context, ids []string) (map[string]map[string]any, error) {
	if o.err != nil {
		return nil, o.err
	}
	out := map[string]map[string]any{}
	for _, id := range ids {
		if a, ok := o.owners[id]; ok {
			out[id] = a
		}
	}
	return out, nil
}

// deactivations records Deactivate calls.
type deactivations struct{ ids []string }

func (d *deactivations) Deactivate(_ context.Context, id, _ string) error {
	d.ids = append(d.ids, id)
	return nil
}

// txn counts work like cdc.Txn.
type txn struct{ added, done int }

func (t *txn) Add(n int) { t.added += n }
func (t *txn) Done()     { t.done++ }

// demoOwners: 1 is an admin, 2 sees tenant 7, 3 sees tenant 8.
var demoOwners = map[string]map[string]any{
	"1": {"id": "1", "tenants": []int64{}, "admin": true},
	"2": {"id": "2", "tenants": []int64{7}, "admin": false},
	"3": {"id": "3", "tenants": []int64{8}, "admin": false},
}

var ordersRel = &change.Relation{ID: 1, Schema: "public", Name: "orders", ReplicaIdentity: 'f', Columns: []change.Column{
	{Name: "id", TypeOID: pgtype.Int8OID, Key: true, Enc: change.EncoderFor(pgtype.Int8OID)},
	{Name: "customer_id", TypeOID: pgtype.Int8OID, Enc: change.EncoderFor(pgtype.Int8OID)},
	{Name: "tenant_id", TypeOID: pgtype.Int8OID, Enc: change.EncoderFor(pgtype.Int8OID)},
	{Name: "tenant_path", TypeOID: pgtype.TextOID},
	{Name: "status", TypeOID: pgtype.TextOID},
	{Name: "total", TypeOID: pgtype.NumericOID, Enc: change.EncoderFor(pgtype.NumericOID)},
	{Name: "internal_note", TypeOID: pgtype.TextOID},
}}

var auditRel = &change.Relation{ID: 2, Schema: "public", Name: "audit_log", Columns: []change.Column{
	{Name: "id", TypeOID: pgtype.Int8OID, Key: true}, {Name: "note", TypeOID: pgtype.TextOID},
}}

// order is a row of ordersRel; "" is NULL.
func order(id, tenant, path, status string) change.Row {
	row := change.Row{}
	for _, v := range []string{id, "", tenant, path, status, "9.50", "secret note"} {
		if v == "" {
			row = append(row, change.Datum{Kind: change.Null})
			continue
		}
		row = append(row, change.Datum{Kind: change.Text, Text: []byte(v)})
	}
	return row
}

type sub struct{ id, owner, event, url, site, secret string }

func TestRouter(t *testing.T) {
	cfg, err := mapping.Parse("walhook.yaml", demo.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper, rules, err := compileConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tx := &change.Tx{Source: "test/db", CommitLSN: 0x100, CommitTime: time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)}
	insert := &change.Change{Relation: ordersRel, Op: change.Insert, New: order("1", "7", "/acme/east", "new"), Tx: tx}
	paid := &change.Change{Relation: ordersRel, Op: change.Update, Old: order("1", "8", "/acme/east", "new"),
		New: order("1", "7", "/acme/east", "paid"), Tx: tx, Seq: 1}

	tests := []struct {
		name    string
		ch      *change.Change
		subs    []sub
		txSites []string
		// want lists the requests as "subscription event", in order;
		// prev lists, per request, whether the body carries "previous".
		want []string
		prev []bool
	}{
		{
			name: "an insert reaches its subscriber",
			ch:   insert,
			subs: []sub{{id: "s1", owner: "2", event: "order.created", url: "https://a.example/h", site: "/"}},
			want: []string{"s1 order.created"},
		},
		{
			name: "an unmapped table produces nothing",
			ch:   &change.Change{Relation: auditRel, Op: change.Insert, New: change.Row{{Kind: change.Text, Text: []byte("1")}, {Kind: change.Null}}, Tx: tx},
			subs: []sub{{id: "s1", owner: "1", event: "order.created", url: "https://a.example/h", site: "/"}},
		},
		{
			name: "the acl rule withholds another tenant's row",
			ch:   insert,
			subs: []sub{
				{id: "s2", owner: "2", event: "order.created", url: "https://a.example/2", site: "/"},
				{id: "s3", owner: "3", event: "order.created", url: "https://a.example/3", site: "/"},
			},
			want: []string{"s2 order.created"},
		},
		{
			name: "a derived event fires beside the standard one",
			ch:   paid,
			subs: []sub{
				{id: "u", owner: "1", event: "order.updated", url: "https://a.example/u", site: "/"},
				{id: "p", owner: "1", event: "order.paid", url: "https://a.example/p", site: "/"},
			},
			want: []string{"u order.updated", "p order.paid"},
			prev: []bool{true, true},
		},
		{
			name: "the old row is hidden from an owner who may not see it",
			ch:   paid,
			subs: []sub{{id: "u", owner: "2", event: "order.updated", url: "https://a.example/u", site: "/"}},
			want: []string{"u order.updated"},
			prev: []bool{false},
		},
		{
			name: "ancestors of the row's site match, other sites do not",
			ch:   insert,
			subs: []sub{
				{id: "root", owner: "1", event: "order.created", url: "https://a.example/r", site: "/"},
				{id: "acme", owner: "1", event: "order.created", url: "https://a.example/a", site: "/acme"},
				{id: "east", owner: "1", event: "order.created", url: "https://a.example/e", site: "/acme/east"},
				{id: "west", owner: "1", event: "order.created", url: "https://a.example/w", site: "/acme/west"},
			},
			// The row's own site first, then its ancestors.
			want: []string{"east order.created", "acme order.created", "root order.created"},
		},
		{
			name:    "the writer's active site reaches its subscribers",
			ch:      insert,
			txSites: []string{"/noaa/oun"},
			subs:    []sub{{id: "oun", owner: "1", event: "order.created", url: "https://a.example/o", site: "/noaa/oun"}},
			want:    []string{"oun order.created"},
		},
		{
			name: "subscriptions sharing a target get one request",
			ch:   insert,
			subs: []sub{
				{id: "a", owner: "1", event: "order.created", url: "https://a.example/same", site: "/"},
				{id: "b", owner: "2", event: "order.created", url: "https://a.example/same", site: "/"},
				{id: "c", owner: "2", event: "order.created", url: "https://a.example/same", site: "/", secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
			},
			want: []string{"a order.created", "c order.created"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			idx := subs.New()
			for _, s := range tc.subs {
				idx.Put(&subs.Subscription{ID: s.id, Owner: s.owner, Events: []string{s.event}, TargetURL: s.url, Site: s.site,
					Dialect: "default", Secret: s.secret, Active: true})
			}
			out := &capture{}
			r := newRouter(mapper, rules, idx, acl.NewOwners(ownerMap{owners: demoOwners}, 0), out, &deactivations{},
				deliver.Dialects(cfg, Version), slog.New(slog.DiscardHandler), metrics.New(Version))
			work := &txn{}
			if err := r.route(context.Background(), work, tc.ch, tc.txSites); err != nil {
				t.Fatalf("route() = %v", err)
			}
			var got []string
			for _, req := range out.got {
				got = append(got, req.SubscriptionID+" "+req.Event)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("route() sent %q, want %q", got, tc.want)
			}
			if work.added != len(tc.want) || work.done != len(tc.want) {
				t.Fatalf("work added %d, done %d; want %d each", work.added, work.done, len(tc.want))
			}
			for i, req := range out.got {
				var body struct {
					ID       string         `json:"id"`
					Event    string         `json:"event"`
					Data     map[string]any `json:"data"`
					Previous map[string]any `json:"previous"`
				}
				if err := json.Unmarshal(req.Body, &body); err != nil {
					t.Fatalf("body %s: %v", req.Body, err)
				}
				if body.ID != req.EventID || body.Event != req.Event || body.Data["id"] != float64(1) {
					t.Fatalf("body %s does not match request %s %s", req.Body, req.EventID, req.Event)
				}
				if _, ok := body.Data["internal_note"]; ok {
					t.Fatalf("body %s carries the excluded internal_note", req.Body)
				}
				if tc.prev != nil && (body.Previous != nil) != tc.prev[i] {
					t.Fatalf("request %d body %s: previous shown %v, want %v", i, req.Body, body.Previous != nil, tc.prev[i])
				}
				if req.Committed != tx.CommitTime || req.Attempt != 1 {
					t.Fatalf("request %d: committed %s attempt %d", i, req.Committed, req.Attempt)
				}
			}
		})
	}
}

// TestRouterOwnerFailures: an owner that cannot be found gets nothing and
// its subscription is deactivated after MaxOwnerMissing changes in a row; an
// owner source that fails fails the change, with no work left done.
func TestRouterOwnerFailures(t *testing.T) {
	cfg, err := mapping.Parse("walhook.yaml", demo.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper, rules, err := compileConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tx := &change.Tx{Source: "test/db", CommitLSN: 0x200}
	ch := &change.Change{Relation: ordersRel, Op: change.Insert, New: order("1", "7", "/", "new"), Tx: tx}
	newIdx := func() *subs.Index {
		idx := subs.New()
		idx.Put(&subs.Subscription{ID: "gone", Owner: "99", Events: []string{"order.created"}, TargetURL: "https://a.example/g", Site: "/", Dialect: "default", Active: true})
		idx.Put(&subs.Subscription{ID: "ok", Owner: "1", Events: []string{"order.created"}, TargetURL: "https://a.example/o", Site: "/", Dialect: "default", Active: true})
		return idx
	}
	m := metrics.New(Version)
	log := slog.New(slog.DiscardHandler)

	t.Run("missing owner", func(t *testing.T) {
		out, store := &capture{}, &deactivations{}
		r := newRouter(mapper, rules, newIdx(), acl.NewOwners(ownerMap{owners: demoOwners}, 0), out, store, deliver.Dialects(cfg, Version), log, m)
		for i := range MaxOwnerMissing {
			if err := r.route(context.Background(), &txn{}, ch, nil); err != nil {
				t.Fatal(err)
			}
			if i < MaxOwnerMissing-1 && len(store.ids) != 0 {
				t.Fatalf("deactivated after %d changes, want %d", i+1, MaxOwnerMissing)
			}
		}
		if !slices.Equal(store.ids, []string{"gone"}) {
			t.Fatalf("deactivated %q, want [gone]", store.ids)
		}
		for _, req := range out.got {
			if req.SubscriptionID != "ok" {
				t.Fatalf("sent to %s, whose owner does not exist", req.SubscriptionID)
			}
		}
		if len(out.got) != MaxOwnerMissing {
			t.Fatalf("%d requests to the existing owner, want %d", len(out.got), MaxOwnerMissing)
		}
	})
	t.Run("owners query does not fit the database", func(t *testing.T) {
		out := &capture{}
		boom := &pgconn.PgError{Code: "42703", Message: `column "tenant_ids" does not exist`}
		r := newRouter(mapper, rules, newIdx(), acl.NewOwners(ownerMap{err: boom}, 0), out, &deactivations{}, deliver.Dialects(cfg, Version), log, m)
		work := &txn{}
		if err := r.route(context.Background(), work, ch, nil); err != nil {
			t.Fatalf("route() = %v, want the deliveries held", err)
		}
		if len(out.got) != 0 || work.added != 0 {
			t.Fatalf("sent %d, added %d work; want nothing", len(out.got), work.added)
		}
		var got []string
		for _, h := range r.pendingHolds {
			got = append(got, h.sub+" "+h.cause)
			if !strings.Contains(h.reason, "tenant_ids") {
				t.Errorf("held for %q, want the query's error", h.reason)
			}
		}
		slices.Sort(got)
		if want := []string{"gone owners", "ok owners"}; !slices.Equal(got, want) {
			t.Fatalf("held %q, want %q", got, want)
		}
	})
	t.Run("owners cannot be loaded because the database went away", func(t *testing.T) {
		out := &capture{}
		boom := &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}
		r := newRouter(mapper, rules, newIdx(), acl.NewOwners(ownerMap{err: boom}, 0), out, &deactivations{}, deliver.Dialects(cfg, Version), log, m)
		work := &txn{}
		err := r.route(context.Background(), work, ch, nil)
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "load owners") {
			t.Fatalf("route() = %v, want the owner source's error: a restart may cure it", err)
		}
		if len(out.got) != 0 || work.added != 0 || len(r.pendingHolds) != 0 {
			t.Fatalf("sent %d, added %d work, held %d; want nothing", len(out.got), work.added, len(r.pendingHolds))
		}
	})
}

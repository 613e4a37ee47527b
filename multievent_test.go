package walhook

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/e2e"
)

// sqlState returns the SQLSTATE and message of err, or "" when it is not a
// PostgreSQL error.
func sqlState(err error) (string, string) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return "", ""
	}
	return pgErr.Code, pgErr.Message
}

// subscribeEvents subscribes owner "1" at "/" to events, delivering to the
// receiver's path.
func (e *env) subscribeEvents(path, secret string, events ...string) string {
	e.T.Helper()
	var sec any
	if secret != "" {
		sec = secret
	}
	var id string
	err := e.Conn.QueryRow(context.Background(), `SELECT walhook.subscribe($1::text[], $2, '1', secret => $3)::text`,
		events, e.Recv.URL+path, sec).Scan(&id)
	if err != nil {
		e.T.Fatalf("subscribe %v: %v", events, err)
	}
	return id
}

// TestSubscribeEventLists: each pattern form is accepted when it matches an
// offered event and refused with 22023 naming it otherwise; the list is kept
// without repeats and event stays its first entry.
func TestSubscribeEventLists(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	ctx := context.Background()
	refused := []struct {
		name    string
		events  []string
		wantMsg string
	}{
		{"empty list", []string{}, "events must list at least one"},
		{"unknown name", []string{"order.created", "order.craeted"}, `unknown event 'order.craeted' (did you mean order.created`},
		{"noun matches nothing", []string{"ordr.*"}, `event pattern 'ordr.*' matches no event (did you mean order.*`},
		{"verb matches nothing", []string{"*.archived"}, `event pattern '*.archived' matches no event`},
		{"pattern inside a name", []string{"order.cr*"}, `malformed event pattern 'order.cr*'`},
		{"two-level pattern", []string{"order.*.x"}, `malformed event pattern`},
		{"bare star verb", []string{"*.*"}, `malformed event pattern`},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Conn.Exec(ctx, `SELECT walhook.subscribe($1::text[], 'https://example.com/h', '1')`, tc.events)
			if code, msg := sqlState(err); code != "22023" || !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("subscribe(%q) = %v, want 22023 containing %q", tc.events, err, tc.wantMsg)
			}
		})
	}
	for _, c := range []struct{ sql, want string }{
		{`SELECT walhook.subscribe(ARRAY['order.created', NULL], 'https://example.com/h', '1')`, "must not contain NULL"},
		{`SELECT walhook.subscribe(ARRAY[['order.created']], 'https://example.com/h', '1')`, "one-dimensional"},
		{`SELECT walhook.subscribe(array_fill('order.created'::text, ARRAY[101]), 'https://example.com/h', '1')`, "at most 100"},
	} {
		_, err := e.Conn.Exec(ctx, c.sql)
		if code, msg := sqlState(err); code != "22023" || !strings.Contains(msg, c.want) {
			t.Fatalf("%s = %v, want 22023 containing %q", c.sql, err, c.want)
		}
	}

	accepted := []struct {
		name   string
		events []string
		want   []string
	}{
		{"noun pattern", []string{"order.*"}, []string{"order.*"}},
		{"verb pattern", []string{"*.created"}, []string{"*.created"}},
		{"every event", []string{"*"}, []string{"*"}},
		{"names and patterns without repeats", []string{"order.created", "order.*", "order.created", "customer.updated"},
			[]string{"order.created", "order.*", "customer.updated"}},
		{"a derived event by its verb", []string{"*.paid"}, []string{"*.paid"}},
	}
	for _, tc := range accepted {
		t.Run(tc.name, func(t *testing.T) {
			id := e.subscribeEvents("/x", "", tc.events...)
			var events []string
			var event string
			if err := e.Conn.QueryRow(ctx, `SELECT events, event FROM walhook.subscriptions WHERE id = $1`, id).Scan(&events, &event); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(events, tc.want) || event != tc.want[0] {
				t.Fatalf("stored events %q, event %q; want %q and %q", events, event, tc.want, tc.want[0])
			}
		})
	}

	// The single-event form takes a pattern too, and keeps refusing as before.
	var id string
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.subscribe('customer.*', 'https://example.com/h', '1')::text`).Scan(&id); err != nil {
		t.Fatalf("subscribe('customer.*') = %v", err)
	}
	// set_events replaces the list; an unknown id is false; bad input is 22023.
	var ok bool
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.set_events($1, ARRAY['order.paid', '*.deleted'])`, id).Scan(&ok); err != nil || !ok {
		t.Fatalf("set_events = %v, %v; want true", ok, err)
	}
	var events []string
	var event string
	if err := e.Conn.QueryRow(ctx, `SELECT events, event FROM walhook.subscriptions WHERE id = $1`, id).Scan(&events, &event); err != nil ||
		!slices.Equal(events, []string{"order.paid", "*.deleted"}) || event != "order.paid" {
		t.Fatalf("after set_events: events %q, event %q, %v", events, event, err)
	}
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.set_events(gen_random_uuid(), ARRAY['order.paid'])`).Scan(&ok); err != nil || ok {
		t.Fatalf("set_events(unknown id) = %v, %v; want false", ok, err)
	}
	_, err := e.Conn.Exec(ctx, `SELECT walhook.set_events($1, ARRAY['nope.*'])`, id)
	if code, _ := sqlState(err); code != "22023" {
		t.Fatalf("set_events(nope.*) = %v, want 22023", err)
	}
	// An old writer that sets only event moves the list with it.
	e.Exec(`UPDATE walhook.subscriptions SET event = 'order.created' WHERE id = $1`, id)
	if err := e.Conn.QueryRow(ctx, `SELECT events FROM walhook.subscriptions WHERE id = $1`, id).Scan(&events); err != nil ||
		!slices.Equal(events, []string{"order.created"}) {
		t.Fatalf("after setting event only: events %q, %v; want [order.created]", events, err)
	}
}

// TestOneSubscriptionManyEvents: one subscription to names and patterns gets
// one request per event a change produces, once even where a name and a
// pattern both match, all signed with its one secret and naming it in
// webhook-subscription; its history holds them all. set_events takes effect
// at its commit.
func TestOneSubscriptionManyEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	const secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	sub := e.subscribeEvents("/many", secret, "order.created", "order.*", "customer.created")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, tenant_path, name) VALUES (1, 7, '/acme', 'Ada')`)
	e.Exec(`INSERT INTO public.orders (id, customer_id, tenant_id, tenant_path, total) VALUES (10, 1, 7, '/acme', 5)`)
	// One update, two events: order.updated and the derived order.paid.
	e.Exec(`UPDATE public.orders SET status = 'paid' WHERE id = 10`)
	e.Recv.Wait(t, "/many", 4)
	// The update reached the index before the next change, so no
	// customer.updated is sent: the list has no customer.updated.
	e.Exec(`UPDATE public.customers SET name = 'Ada L.' WHERE id = 1`)
	e.Exec(`SELECT walhook.set_events($1, ARRAY['customer.updated'])`, sub)
	e.Exec(`UPDATE public.customers SET name = 'Ada Lovelace' WHERE id = 1`)
	got := e.Recv.Wait(t, "/many", 5)

	byEvent := e.Recv.ByEvent(t, "/many") // fails on a repeated event
	for _, want := range []string{"customer.created", "order.created", "order.updated", "order.paid", "customer.updated"} {
		if _, ok := byEvent[want]; !ok {
			t.Fatalf("no %s delivered; got %d requests", want, len(got))
		}
	}
	if n := len(byEvent); n != 5 {
		t.Fatalf("%d distinct events delivered, want 5", n)
	}
	if name := byEvent["customer.updated"].Envelope(t)["data"].(map[string]any)["name"]; name != "Ada Lovelace" {
		t.Fatalf("customer.updated for %v, want only the one after set_events", name)
	}
	key, err := deliver.SecretKey(secret)
	if err != nil {
		t.Fatal(err)
	}
	for ev, d := range byEvent {
		if h := d.Header.Get("webhook-subscription"); h != sub {
			t.Fatalf("%s: webhook-subscription = %q, want %s", ev, h, sub)
		}
		ts, _ := strconv.ParseInt(d.Header.Get("webhook-timestamp"), 10, 64)
		if want := deliver.Sign(key, d.Header.Get("webhook-id"), ts, d.Body); d.Header.Get("webhook-signature") != want {
			t.Fatalf("%s: signature %q does not verify with the subscription's one secret", ev, d.Header.Get("webhook-signature"))
		}
	}
	e2e.WaitFor(t, 10*time.Second, "five attempts in the subscription's history", func() bool { return len(e.Attempts(sub)) == 5 })
}

// TestGoneDeactivatesWholeSubscription: a 410 to one event of a subscription
// deactivates it for all its events.
func TestGoneDeactivatesWholeSubscription(t *testing.T) {
	t.Parallel()
	e := newEnv(t, e2e.RetryConfig(t, "[0s, 200ms, 200ms]", 3))
	sub := e.subscribeEvents("/gone", "", "customer.created", "order.*")
	other := e.Subscribe("order.created", "/ok")
	e.Recv.GoneAt("/gone")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Ada')`)
	e2e.WaitFor(t, 10*time.Second, "the subscription to be deactivated", func() bool {
		active, _ := e.SubscriptionState(sub)
		return !active
	})
	if _, msg := e.SubscriptionState(sub); msg != deliver.GoneMessage {
		t.Fatalf("status_message = %q, want %q", msg, deliver.GoneMessage)
	}
	// An order event of the same subscription goes nowhere now; the other
	// subscription shows the change was mapped and sent.
	e.Exec(`INSERT INTO public.orders (id, customer_id, tenant_id, total) VALUES (10, 1, 7, 5)`)
	e.Recv.Wait(t, "/ok", 1)
	e2e.WaitFor(t, 10*time.Second, "the attempt to /ok recorded", func() bool { return len(e.Attempts(other)) == 1 })
	if n := len(e.Recv.Deliveries("/gone")); n != 1 {
		t.Fatalf("/gone got %d requests, want 1 (customer.created only)", n)
	}
}

// TestEventListsAsOfCommitAcrossRestart: changes made while walhook was
// down are matched against each subscription's events as they stood at the
// change's commit, loaded from the subscription log and the stream.
func TestEventListsAsOfCommitAcrossRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.start()
	sub := e.subscribeEvents("/l", "", "order.created", "customer.*")
	// The subscription is in the log once the stream has passed it.
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the subscription", func() bool { return e.Confirmed() >= target })
	e.stop()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'before')`)
	e.Exec(`SELECT walhook.set_events($1, ARRAY['order.*'])`, sub)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'after')`)
	e.Exec(`INSERT INTO public.orders (id, customer_id, tenant_id, total) VALUES (10, 2, 7, 5)`)
	e.start()
	e.Recv.WaitRows(t, "/l", 1, 10)
	// Once the slot passes the last change, every delivery of it is done.
	target = e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "the slot to pass the changes", func() bool { return e.Confirmed() >= target })
	if n := len(e.Recv.Deliveries("/l")); n != 2 {
		t.Fatalf("/l got %d requests, want 2 (customer 1, order 10)", n)
	}
	for _, d := range e.Recv.Deliveries("/l") {
		env := d.Envelope(t)
		if id := env["data"].(map[string]any)["id"]; env["event"] == "customer.created" && id != 1.0 {
			t.Fatalf("customer.created for row %v, want only row 1, from before set_events", id)
		}
	}
}

package walhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

func TestInsertUpdateDeleteBecomeEvents(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	e.Subscribe("order.created", "/orders", "/", "default", secret)
	e.Subscribe("order.updated", "/orders")
	e.Subscribe("order.deleted", "/orders")
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'Grace')`)
	e.Exec(`INSERT INTO public.orders (id, customer_id, tenant_id, tenant_path, total, internal_note) VALUES (10, 1, 7, '/acme/east', 42.50, 'secret note')`)
	e.Exec(`UPDATE public.orders SET status = 'paid' WHERE id = 10`)
	e.Exec(`DELETE FROM public.orders WHERE id = 10`)

	e.Recv.Wait(t, "/orders", 3)
	byEvent := e.Recv.ByEvent(t, "/orders")
	wantEvents := []string{"order.created", "order.updated", "order.deleted"}
	got := make([]e2e.Delivery, len(wantEvents))
	for i, name := range wantEvents {
		got[i] = byEvent[name]
	}
	for i, d := range got {
		env := d.Envelope(t)
		if env["event"] != wantEvents[i] {
			t.Fatalf("delivery %d event = %v, want %s", i, env["event"], wantEvents[i])
		}
		if d.Header.Get("webhook-id") != env["id"] || env["id"] == "" {
			t.Fatalf("webhook-id header %q, body id %v: want equal and set", d.Header.Get("webhook-id"), env["id"])
		}
		if ct := d.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type = %q", ct)
		}
		if ua := d.Header.Get("User-Agent"); !strings.HasPrefix(ua, "walhook/") {
			t.Fatalf("User-Agent = %q", ua)
		}
		if _, err := time.Parse(time.RFC3339Nano, env["occurred_at"].(string)); err != nil {
			t.Fatalf("occurred_at: %v", err)
		}
		data := env["data"].(map[string]any)
		if data["id"] != float64(10) {
			t.Fatalf("%s data.id = %v, want 10", wantEvents[i], data["id"])
		}
		if _, leaked := data["internal_note"]; leaked {
			t.Fatalf("%s: excluded column internal_note delivered", wantEvents[i])
		}
	}
	created := got[0].Envelope(t)
	data := created["data"].(map[string]any)
	if data["status"] != "new" || data["tenant_path"] != "/acme/east" || created["site"] != "/acme/east" {
		t.Fatalf("order.created = %s", got[0].Body)
	}
	if !strings.Contains(string(got[0].Body), `"total":42.50`) {
		t.Fatalf("numeric total not exact in %s", got[0].Body)
	}
	if got[1].Envelope(t)["data"].(map[string]any)["status"] != "paid" {
		t.Fatalf("order.updated = %s", got[1].Body)
	}
	// install set REPLICA IDENTITY FULL (orders has a site column), so a
	// delete carries the whole old row and is reported at its site.
	if del := got[2].Envelope(t); del["data"].(map[string]any)["status"] != "paid" || del["site"] != "/acme/east" {
		t.Fatalf("order.deleted = %s, want the old row at /acme/east", got[2].Body)
	}

	// The signed one verifies with the Standard Webhooks construction.
	sig := got[0].Header.Get("webhook-signature")
	mac := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
	mac.Write([]byte(got[0].Header.Get("webhook-id") + "." + got[0].Header.Get("webhook-timestamp") + "."))
	mac.Write(got[0].Body)
	if want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil)); sig != want {
		t.Fatalf("webhook-signature = %q, want %q", sig, want)
	}
	if got[1].Header.Get("webhook-signature") != "" {
		t.Fatalf("unsigned subscription got a signature")
	}

	// Every attempt is recorded.
	var n int
	e2e.WaitFor(t, 10*time.Second, "3 attempts recorded", func() bool {
		_ = e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.attempts WHERE status = 'succeeded' AND response_status = 200`).Scan(&n)
		return n == 3
	})
}

func TestRolledBackWorkProducesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/c")
	e.start()
	ctx := context.Background()

	tx, err := e.Conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'rolled back')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// A savepoint rolled back inside a committed transaction.
	e.Exec(`BEGIN;
		INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'kept');
		SAVEPOINT s;
		INSERT INTO public.customers (id, tenant_id, name) VALUES (3, 7, 'savepoint rolled back');
		ROLLBACK TO SAVEPOINT s;
		COMMIT`)
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (4, 7, 'sentinel')`)

	got := e.Recv.Wait(t, "/c", 2)
	if g := e2e.SortedIDs(t, got); len(g) != 2 || g[0] != 2 || g[1] != 4 {
		t.Fatalf("delivered customer ids %v, want [2 4]", g)
	}
}

func TestUnsubscribeStopsDeliveries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	gone := e.Subscribe("customer.created", "/gone")
	e.Subscribe("customer.created", "/stays")
	e.start()

	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'before')`)
	e.Recv.Wait(t, "/gone", 1)
	var ok bool
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.unsubscribe($1)`, gone).Scan(&ok); err != nil || !ok {
		t.Fatalf("unsubscribe = %v, %v; want true", ok, err)
	}
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'after')`)
	e.Recv.Wait(t, "/stays", 2)
	if g := e2e.SortedIDs(t, e.Recv.Deliveries("/gone")); len(g) != 1 || g[0] != 1 {
		t.Fatalf("unsubscribed target got %v, want only [1]", g)
	}
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.unsubscribe($1)`, gone).Scan(&ok); err != nil || ok {
		t.Fatalf("second unsubscribe = %v, %v; want false", ok, err)
	}
}

func TestSubscriptionSeesOnlyLaterChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/early")
	e.start()

	// While running: a change, then a subscription, then another change.
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'before live subscription')`)
	e.Subscribe("customer.created", "/live")
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (2, 7, 'after live subscription')`)
	e.Recv.Wait(t, "/live", 1)
	e.Recv.Wait(t, "/early", 2)

	// While stopped: the same, replayed after the restart.
	e.stop()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (3, 7, 'before subscription while stopped')`)
	e.Subscribe("customer.created", "/late")
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (4, 7, 'after subscription while stopped')`)
	e.start()
	// Delivery is at least once, so rows are compared as sets: what must
	// never happen is a row reaching a subscription made after it.
	e.Recv.WaitRows(t, "/early", 1, 2, 3, 4) // changes while stopped arrive after the restart
	for path, want := range map[string][]float64{"/live": {2, 3, 4}, "/late": {4}} {
		if got := e.Recv.WaitRows(t, path, want...); !slices.Equal(got, want) {
			t.Fatalf("%s got rows %v, want %v", path, got, want)
		}
	}
}

func TestConfirmedLSNAdvancesOnUnmappedWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Subscribe("customer.created", "/c")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'x')`)
	e.Recv.Wait(t, "/c", 1)

	start := e.Confirmed()
	for i := range 50 {
		e.Exec(`INSERT INTO public.audit_log (note) VALUES ($1)`, fmt.Sprint(i))
	}
	target := e.CurrentLSN()
	e2e.WaitFor(t, 30*time.Second, "confirmed LSN to pass unmapped writes", func() bool {
		return e.Confirmed() >= target
	})
	if e.Confirmed() <= start {
		t.Fatalf("confirmed LSN %s did not move from %s", e.Confirmed(), start)
	}
}

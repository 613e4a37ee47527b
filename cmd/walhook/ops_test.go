package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/e2e"
)

func TestStatusJSON(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.Recv.SetStatus(func(r *http.Request) int {
		if r.URL.Path == "/down" {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	e.Subscribe("customer.created", "/c")
	e.Subscribe("customer.created", "/down")
	e.start()
	e.Exec(`INSERT INTO public.customers (id, tenant_id, name) VALUES (1, 7, 'x')`)
	e.Recv.Wait(t, "/c", 1)
	e2e.WaitFor(t, 30*time.Second, "the failed attempt to be queued for a retry", func() bool {
		var n int
		err := e.Conn.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries`).Scan(&n)
		return err == nil && n == 1
	})

	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"status", "--database-url", e.DSN, "--slot", e.Slot, "--json"}, &out, &errb); err != nil {
		t.Fatalf("status --json: %v\n%s", err, errb.String())
	}
	var st walhook.StatusReport
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("status --json output does not parse: %v\n%s", err, out.String())
	}
	if !st.Installed || st.SchemaVersion == 0 {
		t.Fatalf("installed = %v, schema_version = %d; want installed", st.Installed, st.SchemaVersion)
	}
	if st.Slot == nil || st.Slot.Name != e.Slot || st.Slot.ConfirmedLSN == "" || !st.Slot.Active {
		t.Fatalf("slot = %+v, want %s, active, with a confirmed LSN", st.Slot, e.Slot)
	}
	if st.Leader == nil || st.Leader.PID == 0 {
		t.Fatalf("leader = %+v, want the running service's session", st.Leader)
	}
	if st.Subscriptions["active"] != 2 {
		t.Fatalf("subscriptions = %v, want active 2", st.Subscriptions)
	}
	if st.Deliveries.Queued != 1 || st.Deliveries.Queued != st.Deliveries.Due+st.Deliveries.Later+st.Deliveries.Parked+st.Deliveries.Leased {
		t.Fatalf("deliveries = %+v, want 1 queued, split into due, leased, later and parked", st.Deliveries)
	}
	if len(st.RecentFailures) == 0 || st.RecentFailures[0].ResponseStatus == nil || *st.RecentFailures[0].ResponseStatus != 503 {
		t.Fatalf("recent_failures = %+v, want the 503", st.RecentFailures)
	}
	if len(st.Problems) != 0 {
		t.Fatalf("problems = %q, want none", st.Problems)
	}
	for _, field := range []string{`"problems"`, `"slot"`, `"leader"`, `"subscriptions"`, `"deliveries"`, `"recent_failures"`, `"lag_bytes"`} {
		if !strings.Contains(out.String(), field) {
			t.Errorf("status --json has no %s field:\n%s", field, out.String())
		}
	}

	out.Reset()
	if err := run(context.Background(), []string{"status", "--database-url", e.DSN, "--slot", e.Slot}, &out, &errb); err != nil {
		t.Fatalf("status: %v\n%s", err, errb.String())
	}
	t.Logf("walhook status:\n%s", out.String())
	for _, want := range []string{"SLOT", e.Slot, "LEADER", "SUBSCRIPTIONS", "DELIVERIES", "RECENT FAILURES", "503"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status text has no %q:\n%s", want, out.String())
		}
	}
}

// TestStatusExitCodes: walhook status exits 3 when walhook is not
// installed, 4 when the slot is missing, 5 when no process leads, after
// printing the report.
func TestStatusExitCodes(t *testing.T) {
	t.Parallel()
	status := func(t *testing.T, dsn, slot string, asJSON bool) (string, error) {
		t.Helper()
		args := []string{"status", "--database-url", dsn, "--slot", slot}
		if asJSON {
			args = append(args, "--json")
		}
		var out, errb bytes.Buffer
		err := run(context.Background(), args, &out, &errb)
		return out.String(), err
	}
	expect := func(t *testing.T, out string, err error, code int, problem, msg string) {
		t.Helper()
		if err == nil || exitCode(err) != code || !strings.Contains(err.Error(), msg) {
			t.Fatalf("status = %v (exit %d), want exit %d with %q", err, exitCode(err), code, msg)
		}
		if problem != "" && !strings.Contains(out, `"problems": [`+"\n"+`    "`+problem+`"`) {
			t.Fatalf("status --json:\n%s\nwant problems [%q]", out, problem)
		}
	}

	bare := e2e.NewEnv(t, "")
	out, err := status(t, bare.DSN, bare.Slot, false)
	expect(t, out, err, 3, "", "walhook is not installed in this database: run walhook install")
	if !strings.Contains(out, "walhook is not installed") {
		t.Fatalf("status printed %q, want the report first", out)
	}
	out, err = status(t, bare.DSN, bare.Slot, true)
	expect(t, out, err, 3, "not_installed", "not installed")

	e := newEnv(t, "")
	out, err = status(t, e.DSN, e.Slot, true)
	expect(t, out, err, 5, "no_leader", "no walhook run leads")
	out, err = status(t, e.DSN, "no_such_slot", true)
	expect(t, out, err, 4, "slot_missing", "the replication slot does not exist")
	out, err = status(t, e.DSN, "no_such_slot", false)
	expect(t, out, err, 4, "", "run walhook install to create it")
	if !strings.Contains(out, "LEADER") {
		t.Fatalf("status printed %q, want the whole report before the exit", out)
	}
}

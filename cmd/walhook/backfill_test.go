package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
)

// TestBackfillFollow: walhook backfill --subscription starts a backfill and
// follows it to 100% while walhook runs it, exiting 0; --follow of a done
// backfill says so at once; --follow of a cancelled one exits 1 saying
// so; a command line without a backfill is a usage error.
func TestBackfillFollow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, "")
	e.Exec(`INSERT INTO public.orders (id, tenant_id, total) SELECT i, 7, i FROM generate_series(1, 3000) i`)
	e.Exec(`ANALYZE public.orders`)
	sub := e.Subscribe("order.*", "/all")
	// Cancelled before walhook runs: it never starts.
	var cancelled int64
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.backfill($1)`, sub).Scan(&cancelled); err != nil {
		t.Fatal(err)
	}
	e.Exec(`SELECT walhook.cancel_backfill($1)`, cancelled)
	e.start()

	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"backfill", "--database-url", e.DSN, "--subscription", sub}, &out, &errOut); err != nil {
		t.Fatalf("backfill --subscription = %v\n%s%s", err, out.String(), errOut.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if !strings.HasPrefix(lines[0], "backfill ") || !strings.HasSuffix(lines[0], " started") {
		t.Fatalf("first line %q, want backfill <id> started", lines[0])
	}
	id := strings.Fields(lines[0])[1]
	want := "backfill " + id + " [" + strings.Repeat("#", followBarWidth) + "] 100% 3000/3000 rows done"
	if got := lines[len(lines)-1]; got != want {
		t.Fatalf("last line %q, want %q\n%s", got, want, out.String())
	}
	if n := len(e.Recv.Deliveries("/all")); n < 3000 {
		t.Fatalf("%d rows delivered when follow ended, want 3000", n)
	}

	out.Reset()
	if err := run(ctx, []string{"backfill", "--database-url", e.DSN, "--follow", id}, &out, &errOut); err != nil || strings.TrimSpace(out.String()) != want {
		t.Fatalf("backfill --follow %s = %v, %q; want nil, %q", id, err, out.String(), want)
	}

	out.Reset()
	err := run(ctx, []string{"backfill", "--database-url", e.DSN, "--follow", strconv.FormatInt(cancelled, 10)}, &out, &errOut)
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("backfill --follow of a cancelled backfill = %v (exit %d), want exit 1 saying cancelled", err, exitCode(err))
	}
	if !strings.Contains(out.String(), "rows cancelled") {
		t.Fatalf("output %q, want the cancelled status", out.String())
	}

	for _, args := range [][]string{
		{"backfill", "--database-url", e.DSN},
		{"backfill", "--database-url", e.DSN, "--follow", "1", "--subscription", sub},
		{"backfill", "--database-url", e.DSN, "--follow", "1", "--table", "public.orders"},
	} {
		if err := run(ctx, args, &out, &errOut); exitCode(err) != 2 {
			t.Fatalf("%q = %v, want a usage error (exit 2)", args, err)
		}
	}
	if err := run(ctx, []string{"backfill", "--database-url", e.DSN, "--follow", "999999"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("backfill --follow of an unknown id = %v, want does not exist", err)
	}
}

func TestBackfillProgressLine(t *testing.T) {
	tests := []struct {
		name string
		p    backfillProgress
		want string
	}{
		{"running", backfillProgress{status: "running", table: "public.orders", sent: 450, estimate: 1000},
			"backfill 7 [#############.................]  45% 450/1000 rows running (public.orders)"},
		{"no estimate yet", backfillProgress{status: "pending"}, "backfill 7 0 rows pending"},
		{"past the estimate", backfillProgress{status: "running", sent: 1200, estimate: 1200},
			"backfill 7 [#############################.]  99% 1200/1200 rows running"},
		{"failed", backfillProgress{status: "failed", table: "public.orders", sent: 10, estimate: 100},
			"backfill 7 [###...........................]  10% 10/100 rows failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.p.line(7); got != tc.want {
				t.Fatalf("line() = %q, want %q", got, tc.want)
			}
		})
	}
}

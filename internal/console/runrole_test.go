package console_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/e2e"
)

// TestConsoleRunRole: with a role set up by install --run-role and granted
// walhook_admin, as the README says, the console and the portal work: they
// read, and their actions pass the SQL API's grants.
func TestConsoleRunRole(t *testing.T) {
	t.Parallel()
	e := e2e.NewEnv(t, "")
	ctx := context.Background()
	role := e2e.RoleName("run_", e.Slot)
	qr := pgx.Identifier{role}.Sanitize()
	e.Exec(`CREATE ROLE ` + qr + ` LOGIN REPLICATION`)
	t.Cleanup(func() {
		_, _ = e.Conn.Exec(context.WithoutCancel(ctx), `DROP OWNED BY `+qr)
		_, _ = e.Conn.Exec(context.WithoutCancel(ctx), `DROP ROLE IF EXISTS `+qr)
	})
	if _, err := walhook.Install(ctx, e.Conn, e.Config(), walhook.InstallOptions{Slot: e.Slot, Publication: e2e.Publication,
		AllowHTTP: true, RunRole: role}); err != nil {
		t.Fatalf("install: %v", err)
	}
	e.Exec(`GRANT walhook_admin TO ` + qr)
	svc, err := walhook.New(walhook.Config{DatabaseURL: e2e.DSNAs(t, e.DSN, role), Mapping: e.Config(), Slot: e.Slot,
		Publication: e2e.Publication, AllowHTTP: true, AllowPrivateTargets: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(svc.Handler()) // not running: the console works without the pipeline
	t.Cleanup(srv.Close)
	e.Exec(`INSERT INTO walhook.settings (key, value) VALUES ('public_url', $1)`, srv.URL)
	var sub string
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.subscribe('order.created', $1, 'alice')::text`, e.Recv.URL+"/a").Scan(&sub); err != nil {
		t.Fatal(err)
	}

	c := newClient(t)
	code, _, page := c.do("GET", srv.URL+"/console/subscriptions/"+sub, "")
	if code != http.StatusOK {
		t.Fatalf("GET subscription as the run role = %d:\n%s", code, page)
	}
	form := "csrf=" + url.QueryEscape(csrfOf(t, page))
	for _, action := range []string{"ping", "deactivate", "activate", "rotate"} {
		if code, _, page := c.do("POST", srv.URL+"/console/subscriptions/"+sub+"/"+action, form, "Origin", srv.URL); code != http.StatusSeeOther {
			t.Errorf("%s as the run role = %d:\n%s", action, code, page)
		}
	}
	if code, _, _ := c.do("GET", srv.URL+"/console/", ""); code != http.StatusOK {
		t.Errorf("GET /console/ as the run role = %d", code)
	}

	var link string
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.portal_url('alice')`).Scan(&link); err != nil {
		t.Fatal(err)
	}
	if code, _, page := c.do("GET", link+"/", ""); code != http.StatusOK || !strings.Contains(page, e.Recv.URL+"/a") {
		t.Fatalf("portal as the run role = %d:\n%s", code, page)
	}
	base := strings.TrimPrefix(link, srv.URL)
	for _, tc := range []struct{ path, form string }{
		{"/subscriptions", "event=order.paid&target_url=" + url.QueryEscape(e.Recv.URL+"/b")},
		{"/subscriptions/" + sub + "/target", "target_url=" + url.QueryEscape(e.Recv.URL+"/c")},
		{"/subscriptions/" + sub + "/reveal", ""},
	} {
		if code, _, page := c.do("POST", srv.URL+base+tc.path, tc.form, "Origin", srv.URL); code != http.StatusSeeOther && code != http.StatusOK {
			t.Errorf("portal POST %s as the run role = %d:\n%s", tc.path, code, page)
		}
	}
}

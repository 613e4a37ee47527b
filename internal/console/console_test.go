package console_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/e2e"
)

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token on the page:\n%s", page)
	}
	return m[1]
}

// TestConsole: on loopback the console shows health, the subscriptions and
// a subscription's failed attempt with its request; actions are POSTs that
// need the session's CSRF token and a same origin, and go through the SQL
// API; the pages carry the locked-down headers.
func TestConsole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sub := e.subscribeAs("alice", "/alice", "order.created", "order.paid")
	e.subscribeAs("bob", "/bob", "customer.created")
	failed := e.failedAttempt(sub, "/alice")
	c := newClient(t)

	code, h, page := c.do("GET", e.URL+"/console/", "")
	if code != http.StatusOK {
		t.Fatalf("GET /console/ = %d:\n%s", code, page)
	}
	for _, want := range []string{"leader streaming", e.Recv.URL + "/alice", e.Recv.URL + "/bob", "order.created, order.paid", "Slot lag", "Queue",
		"<caption>Processes"} {
		if !strings.Contains(page, want) {
			t.Errorf("/console/ lacks %q", want)
		}
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") ||
		strings.Contains(csp, "unsafe-inline") {
		t.Errorf("console CSP = %q", csp)
	}
	for k, v := range map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"} {
		if h.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, h.Get(k), v)
		}
	}
	if strings.Contains(page, "<script>") || strings.Contains(page, " on"+"click=") {
		t.Errorf("inline script on the console page")
	}

	for _, tc := range []struct {
		name, query string
		alice, bob  bool
	}{
		{"owner", "owner=bob", false, true},
		{"event pattern", "event=order.paid", true, false},
		{"state", "state=inactive", false, false},
		{"kind", "kind=dynamic", true, true},
		{"static", "kind=static", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, p := c.do("GET", e.URL+"/console/?"+tc.query, "")
			_, p, _ = strings.Cut(p, `id="h-subs"`) // past the failure streaks
			if got := strings.Contains(p, e.Recv.URL+"/alice"); got != tc.alice {
				t.Errorf("?%s shows alice: %v, want %v", tc.query, got, tc.alice)
			}
			if got := strings.Contains(p, e.Recv.URL+"/bob"); got != tc.bob {
				t.Errorf("?%s shows bob: %v, want %v", tc.query, got, tc.bob)
			}
		})
	}

	code, _, page = c.do("GET", e.URL+"/console/subscriptions/"+sub, "")
	if code != http.StatusOK {
		t.Fatalf("GET subscription = %d:\n%s", code, page)
	}
	for _, want := range []string{"failed", "walhook.ping", "HTTP 500", "&#34;event&#34;: &#34;walhook.ping&#34;", fmt.Sprintf("/console/attempts/%d/redeliver", failed)} {
		if !strings.Contains(page, want) {
			t.Errorf("subscription page lacks %q:\n%s", want, page)
		}
	}
	token := csrfOf(t, page)
	_, _, live := c.do("GET", e.URL+"/console/subscriptions/"+sub, "", "X-Walhook-Live", "1")
	if strings.Contains(live, "<html") || !strings.Contains(live, "walhook.ping") {
		t.Errorf("live part = %s, want the attempts without the layout", live)
	}

	redeliver := fmt.Sprintf("%s/console/attempts/%d/redeliver", e.URL, failed)
	for _, tc := range []struct {
		name, form, origin string
		want               int
	}{
		{"no CSRF token", "", e.URL, http.StatusForbidden},
		{"wrong CSRF token", "csrf=x" + token, e.URL, http.StatusForbidden},
		{"other origin", "csrf=" + token, "https://evil.example", http.StatusForbidden},
	} {
		if code, _, _ := c.do("POST", redeliver, tc.form, "Origin", tc.origin); code != tc.want {
			t.Errorf("redeliver with %s = %d, want %d", tc.name, code, tc.want)
		}
	}
	if n := e.Count(`SELECT count(*) FROM walhook.attempts WHERE subscription_id = $1`, sub); n != 1 {
		t.Fatalf("%d attempts after refused redeliveries, want 1", n)
	}
	e.Recv.SetStatus(nil)
	code, h, _ = c.do("POST", redeliver, "csrf="+url.QueryEscape(token), "Origin", e.URL)
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "ok=redeliver") {
		t.Fatalf("redeliver = %d %v, want 303 back with ok=redeliver", code, h)
	}
	e2e.WaitFor(t, 20*time.Second, "the redelivered attempt", func() bool {
		return e.Count(`SELECT count(*) FROM walhook.attempts WHERE subscription_id = $1 AND status = 'succeeded'`, sub) == 1
	})

	post := func(action string) int {
		code, _, _ := c.do("POST", e.URL+"/console/subscriptions/"+sub+"/"+action, "csrf="+url.QueryEscape(token), "Origin", e.URL)
		return code
	}
	if code := post("deactivate"); code != http.StatusSeeOther {
		t.Fatalf("deactivate = %d", code)
	}
	if active, _ := e.SubscriptionState(sub); active {
		t.Fatalf("still active after deactivate")
	}
	if code := post("ping"); code != http.StatusBadRequest {
		t.Errorf("ping of an inactive subscription = %d, want 400 (the API refuses it)", code)
	}
	if code := post("activate"); code != http.StatusSeeOther {
		t.Fatalf("activate = %d", code)
	}
	var before string
	_ = e.Conn.QueryRow(context.Background(), `SELECT coalesce(secret, '') FROM walhook.subscriptions WHERE id = $1`, sub).Scan(&before)
	code, h, _ = c.do("POST", e.URL+"/console/subscriptions/"+sub+"/rotate", "csrf="+url.QueryEscape(token), "Origin", e.URL)
	var after string
	_ = e.Conn.QueryRow(context.Background(), `SELECT coalesce(secret, '') FROM walhook.subscriptions WHERE id = $1`, sub).Scan(&after)
	if code != http.StatusSeeOther || after == "" || after == before {
		t.Fatalf("rotate = %d, secret changed %v", code, after != before)
	}
	_, _, page = c.do("GET", e.URL+h.Get("Location"), "")
	if strings.Contains(html.UnescapeString(page), after) || !strings.Contains(page, "Secret rotated") {
		t.Fatalf("after rotate the console shows the secret, or no note")
	}
	_, _, page = c.do("GET", e.URL+"/console/held", "")
	if !strings.Contains(page, "Nothing is held") {
		t.Errorf("held page:\n%s", page)
	}
	if code, h, _ := c.do("POST", e.URL+"/console/held/release", "csrf="+url.QueryEscape(csrfOf(t, page)), "Origin", e.URL); code != http.StatusSeeOther ||
		!strings.Contains(h.Get("Location"), "ok=release") {
		t.Errorf("release held = %d %v", code, h)
	}
	if code := post("explode"); code != http.StatusNotFound {
		t.Errorf("unknown action = %d, want 404", code)
	}
}

// TestConsoleAccess: a request that did not come over loopback, or that a
// proxy forwarded, gets the sign-in form and nothing else until it signs in
// with the token; a loopback session does not carry over.
func TestConsoleAccess(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.subscribeAs("alice", "/alice", "order.created")
	target := e.Recv.URL + "/alice"

	local := newClient(t)
	if code, _, page := local.do("GET", e.URL+"/console/", ""); code != http.StatusOK || !strings.Contains(page, target) {
		t.Fatalf("loopback GET = %d, want 200 with the subscription", code)
	}
	// The loopback session's cookie, replayed through a proxy, opens nothing.
	u, _ := url.Parse(e.URL + "/console/")
	cookies := local.c.Jar.Cookies(u)
	if len(cookies) == 0 {
		t.Fatalf("no session cookie on loopback")
	}

	remote := newClient(t, "X-Forwarded-For", "203.0.113.7")
	remote.c.Jar.SetCookies(u, cookies)
	for _, path := range []string{"/console/", "/console/held", "/console/subscriptions/00000000-0000-0000-0000-000000000000"} {
		code, _, page := remote.do("GET", e.URL+path, "")
		if code != http.StatusUnauthorized || strings.Contains(page, target) || !strings.Contains(page, `name="token"`) {
			t.Fatalf("forwarded GET %s = %d, want 401 with the sign-in form only:\n%s", path, code, page)
		}
	}
	if code, _, _ := remote.do("POST", e.URL+"/console/login", "token=wrong", "Origin", e.URL); code != http.StatusUnauthorized {
		t.Fatalf("login with a wrong token = %d, want 401", code)
	}
	if code, _, _ := remote.do("POST", e.URL+"/console/login", "token="+testToken, "Origin", "https://evil.example"); code != http.StatusForbidden {
		t.Fatalf("login from another origin = %d, want 403", code)
	}
	code, h, _ := remote.do("POST", e.URL+"/console/login", "token="+testToken, "Origin", e.URL)
	if code != http.StatusSeeOther || !strings.Contains(h.Get("Set-Cookie"), "SameSite=Strict") || !strings.Contains(h.Get("Set-Cookie"), "HttpOnly") {
		t.Fatalf("login = %d, Set-Cookie %q", code, h.Get("Set-Cookie"))
	}
	if code, _, page := remote.do("GET", e.URL+"/console/", ""); code != http.StatusOK || !strings.Contains(page, target) {
		t.Fatalf("GET after login = %d, want 200 with the subscription", code)
	}
}

// TestPortal: a link from walhook.portal_url shows its owner's
// subscriptions and delivery log and nobody else's; the owner manages them
// through the SQL API, whose checks apply; tampered and expired links are
// refused.
func TestPortal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	alice := e.subscribeAs("alice", "/alice", "order.created")
	bob := e.subscribeAs("bob", "/bob", "customer.created")
	bobFailed := e.failedAttempt(bob, "/bob")
	e.Recv.SetStatus(nil)
	link := e.portalURL("alice")
	base := strings.TrimPrefix(link, e.URL)
	c := newClient(t)

	code, h, page := c.do("GET", link, "")
	if code != http.StatusSeeOther {
		t.Fatalf("GET link = %d, want a redirect to the portal's page", code)
	}
	code, h, page = c.do("GET", link+"/", "")
	if code != http.StatusOK || !strings.Contains(page, e.Recv.URL+"/alice") || strings.Contains(page, e.Recv.URL+"/bob") ||
		strings.Contains(page, bob) || !strings.Contains(page, `value="customer.created"`) {
		t.Fatalf("alice's portal = %d, want alice's subscription, not bob's, and the event picker:\n%s", code, page)
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors https://app.example.com") || !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("portal CSP = %q", csp)
	}
	if h.Get("X-Frame-Options") != "" || h.Get("Referrer-Policy") != "same-origin" {
		t.Errorf("portal X-Frame-Options %q, Referrer-Policy %q", h.Get("X-Frame-Options"), h.Get("Referrer-Policy"))
	}

	post := func(path, form string) (int, http.Header, string) {
		return c.do("POST", e.URL+base+path, form, "Origin", e.URL)
	}
	for _, tc := range []struct {
		name, method, path, form string
		want                     int
	}{
		{"bob's subscription", "GET", "/subscriptions/" + bob, "", http.StatusNotFound},
		{"ping bob's", "POST", "/subscriptions/" + bob + "/ping", "", http.StatusForbidden},
		{"deactivate bob's", "POST", "/subscriptions/" + bob + "/deactivate", "", http.StatusForbidden},
		{"reveal bob's secret", "POST", "/subscriptions/" + bob + "/reveal", "", http.StatusForbidden},
		{"delete bob's", "POST", "/subscriptions/" + bob + "/delete", "", http.StatusForbidden},
		{"retarget bob's", "POST", "/subscriptions/" + bob + "/target", "target_url=" + url.QueryEscape("https://evil.example/"), http.StatusForbidden},
		{"change bob's events", "POST", "/subscriptions/" + bob + "/events", "event=order.created", http.StatusForbidden},
		{"rotate bob's secret", "POST", "/subscriptions/" + bob + "/rotate", "", http.StatusForbidden},
		{"activate bob's", "POST", "/subscriptions/" + bob + "/activate", "", http.StatusForbidden},
		{"redeliver bob's attempt", "POST", fmt.Sprintf("/attempts/%d/redeliver", bobFailed), "", http.StatusNotFound},
		{"http target refused? no: allowed; credentials refused", "POST", "/subscriptions", "event=order.created&target_url=" + url.QueryEscape("https://u:p@example.com/"), http.StatusBadRequest},
		{"unknown event", "POST", "/subscriptions", "event=order.creatd&target_url=" + url.QueryEscape("https://example.com/"), http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var code int
			if tc.method == "GET" {
				code, _, _ = c.do("GET", e.URL+base+tc.path, "")
			} else {
				code, _, _ = post(tc.path, tc.form)
			}
			if code != tc.want {
				t.Errorf("%s %s = %d, want %d", tc.method, tc.path, code, tc.want)
			}
		})
	}
	if active, _ := e.SubscriptionState(bob); !active {
		t.Fatalf("alice's portal deactivated bob's subscription")
	}
	if n := e.Count(`SELECT count(*) FROM walhook.subscriptions WHERE owner = 'alice'`); n != 1 {
		t.Fatalf("alice has %d subscriptions after refused creates, want 1", n)
	}

	// Create, change, reveal, rotate, delete: alice's own.
	code, h, _ = post("/subscriptions", "event=order.created&event=order.paid&target_url="+url.QueryEscape(e.Recv.URL+"/new"))
	if code != http.StatusSeeOther {
		t.Fatalf("create = %d", code)
	}
	var created string
	if err := e.Conn.QueryRow(context.Background(), `SELECT id::text FROM walhook.subscriptions WHERE owner = 'alice' AND target_url = $1 AND events = '{order.created,order.paid}'`,
		e.Recv.URL+"/new").Scan(&created); err != nil {
		t.Fatalf("created subscription: %v", err)
	}
	if code, _, _ := post("/subscriptions/"+created+"/target", "target_url="+url.QueryEscape(e.Recv.URL+"/moved")); code != http.StatusSeeOther {
		t.Fatalf("set target = %d", code)
	}
	if code, _, _ := post("/subscriptions/"+created+"/target", "target_url=ftp://x"); code != http.StatusBadRequest {
		t.Fatalf("set target ftp:// = %d, want 400", code)
	}
	if code, _, _ := post("/subscriptions/"+created+"/events", "event=customer.created"); code != http.StatusSeeOther {
		t.Fatalf("set events = %d", code)
	}
	var target string
	var events []string
	_ = e.Conn.QueryRow(context.Background(), `SELECT target_url, events FROM walhook.subscriptions WHERE id = $1`, created).Scan(&target, &events)
	if target != e.Recv.URL+"/moved" || len(events) != 1 || events[0] != "customer.created" {
		t.Fatalf("after changes target %q events %v", target, events)
	}
	code, _, page = post("/subscriptions/"+created+"/rotate", "")
	var secret string
	_ = e.Conn.QueryRow(context.Background(), `SELECT secret FROM walhook.subscriptions WHERE id = $1`, created).Scan(&secret)
	if code != http.StatusOK || secret == "" || !strings.Contains(html.UnescapeString(page), secret) {
		t.Fatalf("rotate = %d, want the new secret shown once", code)
	}
	if _, _, page = c.do("GET", e.URL+base+"/subscriptions/"+created, ""); strings.Contains(html.UnescapeString(page), secret) {
		t.Fatalf("the subscription page shows the secret")
	}
	if code, _, page = post("/subscriptions/"+created+"/reveal", ""); code != http.StatusOK || !strings.Contains(html.UnescapeString(page), secret) {
		t.Fatalf("reveal = %d, want the secret", code)
	}
	if code, _, _ := post("/subscriptions/"+created+"/ping", ""); code != http.StatusSeeOther {
		t.Fatalf("ping = %d", code)
	}
	e.Recv.Wait(t, "/moved", 1)
	if code, _, _ := post("/subscriptions/"+created+"/delete", ""); code != http.StatusSeeOther {
		t.Fatalf("delete = %d", code)
	}
	if n := e.Count(`SELECT count(*) FROM walhook.subscriptions WHERE id = $1`, created); n != 0 {
		t.Fatalf("deleted subscription still there")
	}
	if code, _, _ := c.do("POST", e.URL+base+"/subscriptions/"+alice+"/deactivate", "", "Origin", "https://evil.example"); code != http.StatusForbidden {
		t.Fatalf("portal POST from another origin = %d, want 403", code)
	}

	// Tampered and expired links.
	payload, sig, _ := strings.Cut(strings.TrimPrefix(base, "/portal/"), ".")
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	exp, owner, _ := strings.Cut(string(raw), ":")
	if owner != "alice" || exp == "" {
		t.Fatalf("link payload %q", raw)
	}
	var key []byte
	if err := e.Conn.QueryRow(context.Background(), `SELECT key FROM walhook.portal_keys`).Scan(&key); err != nil {
		t.Fatal(err)
	}
	sign := func(p string) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(p))
		return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	if sign(payload) != sig {
		t.Fatalf("portal_url's signature %q is not HMAC-SHA256 of the payload (%q)", sig, sign(payload))
	}
	asBob := base64.RawURLEncoding.EncodeToString([]byte(exp + ":bob"))
	expired := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d:alice", time.Now().Add(-time.Minute).Unix()))
	for _, tc := range []struct{ name, token, want string }{
		{"owner swapped", asBob + "." + sig, "not valid"},
		{"signature changed", payload + "." + sign(payload+"x"), "not valid"},
		{"no signature", payload, "not valid"},
		{"expired", expired + "." + sign(expired), "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, page := c.do("GET", e.URL+"/portal/"+tc.token+"/", "")
			if code != http.StatusForbidden || !strings.Contains(page, tc.want) || strings.Contains(page, e.Recv.URL) {
				t.Errorf("GET = %d, want 403 saying %q and nothing else:\n%s", code, tc.want, page)
			}
			if code, _, _ := c.do("POST", e.URL+"/portal/"+tc.token+"/subscriptions/"+alice+"/deactivate", "", "Origin", e.URL); code != http.StatusForbidden {
				t.Errorf("POST = %d, want 403", code)
			}
		})
	}
	if active, _ := e.SubscriptionState(alice); !active {
		t.Fatalf("a refused link deactivated alice's subscription")
	}
}

// TestPortalURL: portal_url's checks, and a walhook_app session may ask
// only for the owner it names.
func TestPortalURL(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	for _, tc := range []struct{ name, sql, code string }{
		{"empty owner", `SELECT walhook.portal_url('')`, "22023"},
		{"negative ttl", `SELECT walhook.portal_url('a', '-1 hour')`, "22023"},
		{"too long", `SELECT walhook.portal_url('a', '31 days')`, "22023"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Conn.Exec(ctx, tc.sql)
			if err == nil || !strings.Contains(err.Error(), tc.code) {
				t.Errorf("%s = %v, want SQLSTATE %s", tc.sql, err, tc.code)
			}
		})
	}
	e.Exec(`UPDATE walhook.settings SET value = 'https://hooks.example.com/' WHERE key = 'public_url'`)
	var u string
	if err := e.Conn.QueryRow(ctx, `SELECT walhook.portal_url('a b', '5 minutes')`).Scan(&u); err != nil || !strings.HasPrefix(u, "https://hooks.example.com/portal/") {
		t.Fatalf("portal_url = %q, %v", u, err)
	}
	role := e2e.RoleName("app_", e.Slot)
	e.Exec(fmt.Sprintf(`CREATE ROLE %q LOGIN IN ROLE walhook_app`, role))
	t.Cleanup(func() { _, _ = e.Conn.Exec(context.WithoutCancel(ctx), fmt.Sprintf(`DROP ROLE IF EXISTS %q`, role)) })
	tx, err := e.Conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL ROLE %q`, role)); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('walhook.owner', 'alice', true)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT walhook.portal_url('alice')`); err != nil {
		t.Fatalf("walhook_app for alice: portal_url('alice') = %v", err)
	}
	if _, err := tx.Exec(ctx, `SELECT walhook.portal_url('bob')`); err == nil || !strings.Contains(err.Error(), "42501") {
		t.Fatalf("walhook_app for alice: portal_url('bob') = %v, want 42501", err)
	}
}

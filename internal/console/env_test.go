package console_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/e2e"
	"github.com/walhook/walhook/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testToken is the console token of the test services.
const testToken = "correct-horse-battery-staple"

// env is a database with walhook installed, a running Service with the
// console token and public URL set, and its Handler served on 127.0.0.1.
type env struct {
	*e2e.Env
	svc *walhook.Service
	srv *httptest.Server
	URL string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{Env: e2e.NewEnv(t, e2e.RetryConfig(t, "[0s, 1h]", 50))}
	ctx := context.Background()
	if _, err := walhook.Install(ctx, e.Conn, e.Config(), walhook.InstallOptions{Slot: e.Slot, Publication: e2e.Publication, AllowHTTP: true}); err != nil {
		t.Fatalf("install: %v", err)
	}
	e.srv = httptest.NewUnstartedServer(nil)
	e.URL = "http://" + e.srv.Listener.Addr().String()
	logger := slog.New(slog.NewTextHandler(e2e.TestWriter{T: t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc, err := walhook.New(walhook.Config{
		DatabaseURL: e.DSN, Mapping: e.Config(), Slot: e.Slot, Publication: e2e.Publication,
		AllowHTTP: true, AllowPrivateTargets: true, StandbyInterval: 100 * time.Millisecond,
		ShutdownTimeout: 10 * time.Second, HeartbeatInterval: 300 * time.Millisecond,
		MinRestartBackoff: 100 * time.Millisecond, MaxRestartBackoff: time.Second,
		ConsoleToken: testToken, PublicURL: e.URL, PortalFrameAncestors: []string{"https://app.example.com"},
	}, logger)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.svc = svc
	e.srv.Config.Handler = svc.Handler()
	e.srv.Start()
	var wg conc.WaitGroup
	var runErr error
	wg.Go(func() { runErr = svc.Run(context.Background()) })
	t.Cleanup(func() {
		e.srv.Close()
		_ = svc.Stop(context.Background())
		wg.Wait()
		if runErr != nil {
			t.Errorf("Run: %v", runErr)
		}
	})
	// Run records the public URL before it streams.
	e2e.WaitFor(t, 20*time.Second, "walhook ready and public_url recorded", func() bool {
		return svc.Health().Ready && e.Count(`SELECT count(*) FROM walhook.settings WHERE key = 'public_url'`) == 1
	})
	return e
}

// subscribeAs subscribes owner to events at the receiver's path and
// returns the id.
func (e *env) subscribeAs(owner, path string, events ...string) string {
	e.T.Helper()
	var id string
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.subscribe($1::text[], $2, $3)::text`,
		events, e.Recv.URL+path, owner).Scan(&id); err != nil {
		e.T.Fatalf("subscribe %s: %v", owner, err)
	}
	return id
}

// failedAttempt pings sub while the receiver answers 500 at path and waits
// for the failed attempt; it returns its id.
func (e *env) failedAttempt(sub, path string) int64 {
	e.T.Helper()
	e.Recv.SetStatus(func(r *http.Request) int {
		if r.URL.Path == path {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	e.Exec(`SELECT walhook.ping($1)`, sub)
	var id int64
	e2e.WaitFor(e.T, 20*time.Second, "a failed attempt", func() bool {
		err := e.Conn.QueryRow(context.Background(), `SELECT coalesce(max(id), 0) FROM walhook.attempts
			WHERE subscription_id = $1 AND status = 'failed'`, sub).Scan(&id)
		return err == nil && id > 0
	})
	return id
}

// portalURL asks walhook.portal_url for owner's link.
func (e *env) portalURL(owner string) string {
	e.T.Helper()
	var u string
	if err := e.Conn.QueryRow(context.Background(), `SELECT walhook.portal_url($1)`, owner).Scan(&u); err != nil {
		e.T.Fatalf("portal_url(%s): %v", owner, err)
	}
	if !strings.HasPrefix(u, e.URL+"/portal/") {
		e.T.Fatalf("portal_url(%s) = %q, want a link under %s/portal/", owner, u, e.URL)
	}
	return u
}

// client is an HTTP client with a cookie jar that does not follow
// redirects; headers are set on every request.
type client struct {
	t       *testing.T
	c       *http.Client
	headers http.Header
}

func newClient(t *testing.T, headers ...string) *client {
	jar, _ := cookiejar.New(nil)
	h := http.Header{}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Set(headers[i], headers[i+1])
	}
	return &client{t: t, headers: h, c: &http.Client{Jar: jar, Timeout: 20 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// do sends a request and returns the status, headers and body.
func (c *client) do(method, url, form string, headers ...string) (int, http.Header, string) {
	c.t.Helper()
	var body *strings.Reader
	if form != "" {
		body = strings.NewReader(form)
	} else {
		body = strings.NewReader("")
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		c.t.Fatal(err)
	}
	for k, v := range c.headers {
		req.Header[k] = v
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.c.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, resp.Header, sb.String()
}

package console

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultRefresh is how often a page's live part is fetched again.
const DefaultRefresh = 3 * time.Second

//go:embed assets templates
var files embed.FS

// Health is what the service reports of its pipeline.
type Health struct {
	Ready       bool
	Role        string
	Detail      string
	LastError   string
	LastErrorAt time.Time
	Restarts    int64
}

// Config is what a Console needs from the service that mounts it.
type Config struct {
	// DatabaseURL is the service's connection string: the console opens a
	// small pool from it on first use.
	DatabaseURL string
	// Token opens the console to requests that are not from loopback; empty
	// closes it to them.
	Token string
	// PublicURL is the base of portal links, recorded in walhook.settings.
	PublicURL string
	// FrameAncestors are the origins that may embed the portal in a frame
	// (CSP frame-ancestors); empty means 'self' only.
	FrameAncestors []string
	// Health reports the pipeline; Status reads what walhook status
	// prints, as a value whose JSON form is walhook.StatusReport's.
	Health func() Health
	Status func(ctx context.Context, conn *pgx.Conn) (any, error)
	// Refresh is how often pages update themselves (DefaultRefresh).
	Refresh time.Duration
}

// Console serves /console/ and /portal/.
type Console struct {
	cfg   Config
	log   *slog.Logger
	mux   *http.ServeMux
	pages map[string]*page
	auth  *auth

	mu     sync.Mutex
	pool   *pgxpool.Pool
	closed bool

	keyMu     sync.Mutex
	portalKey []byte
}

// New returns a Console; it does no I/O.
func New(cfg Config, logger *slog.Logger) (*Console, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Health == nil {
		cfg.Health = func() Health { return Health{Role: "unknown", Detail: "unknown"} }
	}
	pages, err := loadPages()
	if err != nil {
		return nil, err
	}
	a, err := newAuth(cfg.Token)
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: logger.With("component", "console"), pages: pages, auth: a}
	c.routes()
	return c, nil
}

// ValidatePublicURL checks a public URL for portal links: absolute http or
// https, no query or fragment.
func ValidatePublicURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q: want an absolute http(s) URL without credentials, query or fragment, like https://hooks.example.com", s)
	}
	return nil
}

// ValidateFrameAncestor checks one CSP frame-ancestors source.
func ValidateFrameAncestor(s string) error {
	if s == "'self'" || s == "'none'" {
		return nil
	}
	if strings.ContainsAny(s, " ;,'\"\t\n") || s == "" {
		return fmt.Errorf("%q: want an origin like https://app.example.com, or 'self'", s)
	}
	return nil
}

func (c *Console) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(files, "assets")
	assets := http.StripPrefix("/console/static/", http.FileServerFS(static))
	m.Handle("GET /console/static/", c.plain(assets))
	m.HandleFunc("GET /console", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/console/", http.StatusSeeOther)
	})
	m.HandleFunc("POST /console/login", c.login)
	m.Handle("GET /console/{$}", c.operator(c.overview))
	m.Handle("GET /console/subscriptions/{id}", c.operator(c.subscription))
	m.Handle("GET /console/held", c.operator(c.held))
	m.Handle("POST /console/subscriptions/{id}/{action}", c.operatorAction(c.subscriptionAction))
	m.Handle("POST /console/attempts/{id}/redeliver", c.operatorAction(c.redeliver))
	m.Handle("POST /console/held/release", c.operatorAction(c.releaseHeld))

	m.Handle("GET /portal/{token}/{$}", c.owner(c.portalHome))
	m.Handle("GET /portal/{token}/subscriptions/{id}", c.owner(c.portalSubscription))
	m.Handle("POST /portal/{token}/subscriptions", c.ownerAction(c.portalCreate))
	m.Handle("POST /portal/{token}/subscriptions/{id}/{action}", c.ownerAction(c.portalSubscriptionAction))
	m.Handle("POST /portal/{token}/attempts/{id}/redeliver", c.ownerAction(c.portalRedeliver))
	m.HandleFunc("GET /portal/{token}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Path+"/", http.StatusSeeOther)
	})
	c.mux = m
}

// ServeHTTP serves the console and the portal; mount it at /console/ and
// /portal/ (and /console).
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if strings.HasPrefix(r.URL.Path, "/portal/") {
		h.Set("Content-Security-Policy", c.PortalCSP())
	} else {
		h.Set("Content-Security-Policy", ConsoleCSP)
		h.Set("X-Frame-Options", "DENY")
	}
	c.mux.ServeHTTP(w, r)
}

// ConsoleCSP is the console's Content-Security-Policy: nothing but its own
// origin, no inline script or style, never in a frame.
const ConsoleCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"

// PortalCSP is the portal's Content-Security-Policy: as the console's, but
// the configured origins may frame it.
func (c *Console) PortalCSP() string {
	anc := "'self'"
	if len(c.cfg.FrameAncestors) > 0 {
		anc = strings.Join(c.cfg.FrameAncestors, " ")
	}
	return strings.Replace(ConsoleCSP, "frame-ancestors 'none'", "frame-ancestors "+anc, 1)
}

func (c *Console) plain(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		h.ServeHTTP(w, r)
	})
}

// db returns the console's pool, opening it on first use.
func (c *Console) db() (*pgxpool.Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("console closed")
	}
	if c.pool != nil {
		return c.pool, nil
	}
	pc, err := pgxpool.ParseConfig(c.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	pc.MaxConns = 4
	pc.MinConns = 0
	pc.MaxConnIdleTime = time.Minute
	pc.ConnConfig.RuntimeParams["application_name"] = "walhook console"
	p, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("open console pool: %w", err)
	}
	c.pool = p
	return p, nil
}

// Close closes the console's pool; later requests fail.
func (c *Console) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.pool != nil {
		c.pool.Close()
		c.pool = nil
	}
}

// RecordPublicURL stores Config.PublicURL in walhook.settings, where
// walhook.portal_url reads it; nothing when it is empty.
func RecordPublicURL(ctx context.Context, conn *pgx.Conn, publicURL string) error {
	if publicURL == "" {
		return nil
	}
	_, err := conn.Exec(ctx, `INSERT INTO walhook.settings (key, value) VALUES ('public_url', $1)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE walhook.settings.value IS DISTINCT FROM excluded.value`,
		strings.TrimRight(publicURL, "/"))
	if err != nil {
		return fmt.Errorf("record public_url: %w", err)
	}
	return nil
}

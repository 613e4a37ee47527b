package walhook

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/mapping"
)

// TestConsoleConfig: Validate names the console's fields when they are
// wrong, and Handler serves the console's assets under /console/.
func TestConsoleConfig(t *testing.T) {
	t.Parallel()
	m, err := mapping.Parse("walhook.yaml", demo.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cfg   func(*Config)
		field string
	}{
		{"public URL with a query", func(c *Config) { c.PublicURL = "https://hooks.example.com/?a=1" }, "PublicURL"},
		{"relative public URL", func(c *Config) { c.PublicURL = "/hooks" }, "PublicURL"},
		{"frame ancestor with a directive", func(c *Config) { c.PortalFrameAncestors = []string{"https://a.example; script-src *"} }, "PortalFrameAncestors[0]"},
		{"valid", func(c *Config) {
			c.PublicURL, c.PortalFrameAncestors, c.ConsoleToken = "https://hooks.example.com/base", []string{"'self'", "https://app.example.com"}, "t"
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{DatabaseURL: "postgres://localhost/x", Mapping: m}
			tc.cfg(&c)
			err := c.Validate()
			var ce ConfigError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field):
				t.Fatalf("Validate() = %v, want a ConfigError for %s", err, tc.field)
			}
		})
	}
	svc, err := New(Config{DatabaseURL: "postgres://localhost/x", Mapping: m}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	svc.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/console/static/app.js", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "X-Walhook-Live") ||
		rec.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("GET /console/static/app.js = %d %v", rec.Code, rec.Header())
	}
}

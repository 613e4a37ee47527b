package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// page is one template set: the layout with a page's "title", "main" and
// "live" blocks. A request with the X-Walhook-Live header gets "live" only.
type page struct{ t *template.Template }

var funcs = template.FuncMap{
	"ago":     ago,
	"when":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"pretty":  pretty,
	"prettys": func(s string) string { return pretty([]byte(s)) },
	"dict": func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	},
	"bytes": humanBytes,
	"join":  strings.Join,
	"secs":  func(ms int64) string { return fmt.Sprintf("%g", float64(ms)/1000) },
	"has":   slices.Contains[[]string],
	"short": func(s string) string { return s[:min(len(s), 8)] },
	"deref": func(p *int32) string {
		if p == nil {
			return "—"
		}
		return fmt.Sprint(*p)
	},
}

var pageNames = []string{"overview", "subscription", "held", "login", "portal", "portal_subscription", "result"}

func loadPages() (map[string]*page, error) {
	out := map[string]*page{}
	for _, n := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/parts.html", "templates/"+n+".html")
		if err != nil {
			return nil, fmt.Errorf("parse template %s: %w", n, err)
		}
		out[n] = &page{t: t}
	}
	return out, nil
}

// view is what every page gets: Data is the page's own.
type view struct {
	Title   string
	Portal  bool
	Base    string // /console or /portal/<token>
	CSRF    string
	Refresh int64 // milliseconds; 0: no live part
	Flash   string
	Error   string
	Data    any
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	c.renderView(w, r, status, name, view{Base: "/console", Data: data})
}

func (c *Console) renderView(w http.ResponseWriter, r *http.Request, status int, name string, v view) {
	p := c.pages[name]
	if s, ok := r.Context().Value(csrfKey).(string); ok {
		v.CSRF = s
	}
	if v.Refresh == 0 && name != "login" && name != "result" {
		v.Refresh = c.cfg.Refresh.Milliseconds()
	}
	if v.Flash == "" {
		v.Flash = flashes[r.URL.Query().Get("ok")]
	}
	tmpl := "layout.html"
	if r.Header.Get("X-Walhook-Live") != "" {
		tmpl = "live"
	}
	var buf bytes.Buffer
	if err := p.t.ExecuteTemplate(&buf, tmpl, v); err != nil {
		c.log.Error("render page", "page", name, "err", err)
		http.Error(w, "could not render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// flashes are the messages ?ok= may show: a fixed set, so a link cannot
// put words on the page.
var flashes = map[string]string{
	"redeliver":  "Redelivery queued: it shows up as a new attempt once sent.",
	"ping":       "Ping queued.",
	"activate":   "Subscription activated.",
	"deactivate": "Subscription deactivated.",
	"rotate":     "Secret rotated. The previous secret stays valid for 24 hours.",
	"target":     "Target changed.",
	"events":     "Events changed.",
	"delete":     "Subscription deleted.",
	"create":     "Subscription created.",
	"release":    "Release asked for: the leader judges the held deliveries again; those still failing stay held with their new reason.",
}

// fail shows msg on an error page with a way back.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	base := "/console/"
	if t := r.PathValue("token"); t != "" {
		base = "/portal/" + t + "/"
	}
	c.renderView(w, r, status, "result", view{Title: "Could not do that", Base: strings.TrimSuffix(base, "/"),
		Portal: r.PathValue("token") != "", Error: msg, Data: map[string]any{"Back": base}})
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < 0:
		return "in " + (-d).String()
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func humanBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// pretty shows a body: indented when it is JSON, as text when it is UTF-8,
// else as a count of bytes.
func pretty(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if json.Valid(b) {
		var out bytes.Buffer
		if json.Indent(&out, b, "", "  ") == nil {
			return out.String()
		}
	}
	if utf8.Valid(b) {
		return string(b)
	}
	return fmt.Sprintf("(%d bytes of binary data)", len(b))
}

package walhook

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapping"
)

// Defaults applied by New where Config leaves a field zero.
const (
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultHeartbeatInterval = 30 * time.Second
	DefaultSampleInterval    = 5 * time.Second
	// DefaultMinRestartBackoff and DefaultMaxRestartBackoff bound the wait
	// before the pipeline is started again after a failure.
	DefaultMinRestartBackoff = 500 * time.Millisecond
	DefaultMaxRestartBackoff = 15 * time.Second
)

// Version is walhook's version, sent in the User-Agent of every request. The
// binary sets it at build time with -ldflags "-X github.com/walhook/walhook.Version=...".
var Version = "0.1.0-dev"

// Config is everything one Service needs. cmd/walhook fills it from flags
// and walhook.yaml; a Go program embedding walhook fills it in code.
type Config struct {
	// DatabaseURL is a PostgreSQL connection string for a role that may
	// replicate (REPLICATION) and use schema walhook.
	DatabaseURL string
	// Mapping is the parsed walhook.yaml: mapping.Load, or mapping.Parse for
	// a config held in memory.
	Mapping *mapping.Config
	// Slot and Publication name the replication slot and publication that
	// Install created; default cdc.DefaultSlot and cdc.DefaultPublication.
	Slot        string
	Publication string
	// AllowHTTP allows http:// targets; https only otherwise.
	AllowHTTP bool
	// AllowPrivateTargets allows loopback, private and link-local
	// destinations; AllowTargetCIDRs allows the listed ranges only.
	AllowPrivateTargets bool
	AllowTargetCIDRs    []netip.Prefix
	// StandbyInterval is how often the slot position is reported to
	// PostgreSQL (cdc.DefaultStandbyInterval).
	StandbyInterval time.Duration
	// ShutdownTimeout bounds how long Stop lets deliveries under way finish.
	ShutdownTimeout time.Duration
	// HeartbeatInterval is how often the leader writes a logical message so
	// that an idle database still moves the slot.
	HeartbeatInterval time.Duration
	// SampleInterval is how often slot lag is sampled for the metrics.
	SampleInterval time.Duration
	// MinRestartBackoff and MaxRestartBackoff bound the wait before the
	// pipeline starts again after a failure (a panic, a lost connection).
	MinRestartBackoff time.Duration
	MaxRestartBackoff time.Duration
	// Reload, when set, loads the config again after `walhook install` ran
	// with another config while this process runs (the stream announces
	// every install): the pipeline restarts with what it returns, if that is
	// what was installed. Without it, such an install stops Run with a
	// message saying to restart with the new config. cmd/walhook reads the
	// --config file again.
	Reload func() (*mapping.Config, error)
	// DriftInterval is how often the leader checks that the publication
	// still covers what the config needs, healing it if not
	// (DefaultDriftInterval).
	DriftInterval time.Duration
	// BackfillChunk is how many rows a backfill reads per chunk
	// (DefaultBackfillChunk).
	BackfillChunk int

	// ConsoleToken opens the console (/console on Handler) to requests
	// that do not come over loopback; empty keeps it loopback only.
	ConsoleToken string
	// PublicURL is where browsers reach Handler, the base of the links
	// walhook.portal_url gives (recorded in walhook.settings by Run).
	PublicURL string
	// PortalFrameAncestors are the origins that may show the portal in a
	// frame (CSP frame-ancestors); empty means 'self' only.
	PortalFrameAncestors []string
}

// nameRE is what slot and publication names may be. PostgreSQL allows no
// more for slots; publications are held to the same so that the names can
// go into replication commands without quoting.
var nameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ConfigError is one problem with a Config, naming its field.
type ConfigError struct {
	Field   string
	Problem string
}

func (e ConfigError) Error() string { return "walhook.Config." + e.Field + ": " + e.Problem }

// Validate reports every problem with c at once (errors.Join of
// ConfigError), or nil.
func (c *Config) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if strings.TrimSpace(c.DatabaseURL) == "" {
		add("DatabaseURL", "empty: want a PostgreSQL connection URL")
	}
	if c.Mapping == nil {
		add("Mapping", "nil: load walhook.yaml with mapping.Load")
	}
	for _, n := range []struct{ field, value string }{{"Slot", c.Slot}, {"Publication", c.Publication}} {
		if n.value != "" && !nameRE.MatchString(n.value) {
			add(n.field, "%q: want 1 to 63 lower-case letters, digits and _ (PostgreSQL's rule for slot names)", n.value)
		}
	}
	for _, d := range []struct {
		field string
		value time.Duration
	}{
		{"StandbyInterval", c.StandbyInterval}, {"ShutdownTimeout", c.ShutdownTimeout},
		{"HeartbeatInterval", c.HeartbeatInterval}, {"SampleInterval", c.SampleInterval},
		{"MinRestartBackoff", c.MinRestartBackoff}, {"MaxRestartBackoff", c.MaxRestartBackoff},
		{"DriftInterval", c.DriftInterval},
	} {
		if d.value < 0 {
			add(d.field, "negative duration %s", d.value)
		}
	}
	if c.MinRestartBackoff > 0 && c.MaxRestartBackoff > 0 && c.MinRestartBackoff > c.MaxRestartBackoff {
		add("MinRestartBackoff", "%s is more than MaxRestartBackoff %s", c.MinRestartBackoff, c.MaxRestartBackoff)
	}
	for i, p := range c.AllowTargetCIDRs {
		if !p.IsValid() {
			add(fmt.Sprintf("AllowTargetCIDRs[%d]", i), "invalid prefix")
		}
	}
	c.validateConsole(add)
	return errors.Join(errs...)
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Slot == "" {
		c.Slot = cdc.DefaultSlot
	}
	if c.Publication == "" {
		c.Publication = cdc.DefaultPublication
	}
	if c.StandbyInterval == 0 {
		c.StandbyInterval = cdc.DefaultStandbyInterval
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = DefaultSampleInterval
	}
	if c.MinRestartBackoff == 0 {
		c.MinRestartBackoff = DefaultMinRestartBackoff
	}
	if c.DriftInterval == 0 {
		c.DriftInterval = DefaultDriftInterval
	}
	if c.MaxRestartBackoff == 0 {
		c.MaxRestartBackoff = max(DefaultMaxRestartBackoff, c.MinRestartBackoff)
	}
	return c
}

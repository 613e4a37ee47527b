package deliver

import (
	"net/http"
	"strconv"
	"time"

	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/mapping"
)

// Dialect turns an event into a request body and headers.
type Dialect struct {
	Name      string
	Body      string // mapping.BodyEnvelope or mapping.BodyRow
	Method    string
	UserAgent string
	Header    http.Header // extra headers, canonicalised
	// RateLimit caps requests per second to one target URL; 0 is no cap.
	RateLimit float64
	// Batch sends many events in one request; nil sends one per request.
	Batch *Batch
	// OrderByKey sends one subscription's events of one row key one after
	// another in commit order (ordering: key); see Request.Order.
	OrderByKey bool
}

// Batch is a dialect's batching: events to one subscription are collected
// until MaxEvents, MaxBytes of batch document, or MaxWait since the first,
// then sent as one request.
type Batch struct {
	MaxEvents int
	MaxWait   time.Duration
	MaxBytes  int
}

// Batch defaults, applied by Dialects where the config's batch: is silent.
const (
	DefaultBatchEvents = 100
	DefaultBatchWait   = 200 * time.Millisecond
	DefaultBatchBytes  = 1 << 20
)

// Dialect defaults, applied by Dialects where the config is silent.
const (
	DefaultMethod = http.MethodPost
	// ZapierRateLimit is the zapier dialect's requests per second to one
	// hook URL: Zapier takes about 30.
	ZapierRateLimit = 30
)

// Dialects builds the dialects of a config, with their defaults; "default"
// and "zapier" always exist.
func Dialects(cfg *mapping.Config, version string) map[string]*Dialect {
	out := map[string]*Dialect{}
	ua := "walhook/" + version
	for name, dc := range cfg.Dialects {
		d := &Dialect{Name: name, Body: dc.Body, Method: dc.Method, UserAgent: dc.UserAgent, Header: http.Header{},
			OrderByKey: dc.Ordering == mapping.OrderingKey}
		switch {
		case dc.RateLimit != nil:
			d.RateLimit = *dc.RateLimit
		case name == mapping.DialectZapier:
			d.RateLimit = ZapierRateLimit
		}
		if d.Body == "" {
			d.Body = mapping.BodyEnvelope
		}
		if b := dc.Batch; b != nil {
			d.Batch = &Batch{MaxEvents: b.MaxEvents, MaxWait: b.MaxWait, MaxBytes: b.MaxBytes}
			if d.Batch.MaxEvents <= 0 {
				d.Batch.MaxEvents = DefaultBatchEvents
			}
			if d.Batch.MaxWait <= 0 {
				d.Batch.MaxWait = DefaultBatchWait
			}
			if d.Batch.MaxBytes <= 0 {
				d.Batch.MaxBytes = DefaultBatchBytes
			}
		}
		if d.Method == "" {
			d.Method = DefaultMethod
		}
		if d.UserAgent == "" {
			d.UserAgent = ua
		}
		for k, v := range dc.Headers {
			d.Header.Set(k, v)
		}
		out[name] = d
	}
	for name, body := range map[string]string{mapping.DialectDefault: mapping.BodyEnvelope, mapping.DialectZapier: mapping.BodyRow} {
		if out[name] == nil {
			out[name] = &Dialect{Name: name, Body: body, Method: DefaultMethod, UserAgent: ua, Header: http.Header{}}
			if name == mapping.DialectZapier {
				out[name].RateLimit = ZapierRateLimit
			}
		}
	}
	return out
}

// AppendBody appends the body for ev in this dialect. site is the site the
// event is reported at (the row's). withPrevious says whether the old row may
// be shown (the envelope's "previous", updates only).
func (d *Dialect) AppendBody(dst []byte, ev *mapping.Event, site string, withPrevious bool) []byte {
	ch := ev.Change
	row, fill := ch.New, ch.Old
	if ch.Op == change.Delete {
		row, fill = ch.Old, nil
	}
	if d.Body == mapping.BodyRow {
		if ev.Data != nil {
			return append(dst, ev.Data...)
		}
		return ev.Table.AppendData(dst, ch.Relation, row, fill)
	}
	dst = append(dst, `{"id":`...)
	dst = change.AppendString(dst, []byte(ev.ID))
	dst = append(dst, `,"event":`...)
	dst = change.AppendString(dst, []byte(ev.Name))
	dst = append(dst, `,"occurred_at":"`...)
	dst = ch.Tx.CommitTime.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","site":`...)
	dst = change.AppendString(dst, []byte(site))
	if ev.Backfill != 0 {
		// An existing row sent by a backfill, not a change: receivers can
		// tell it apart.
		dst = append(dst, `,"backfill":`...)
		dst = strconv.AppendInt(dst, ev.Backfill, 10)
	}
	dst = append(dst, `,"data":`...)
	if ev.Data != nil {
		dst = append(dst, ev.Data...)
	} else {
		dst = ev.Table.AppendData(dst, ch.Relation, row, fill)
	}
	if withPrevious && ch.Op == change.Update && ch.Old != nil {
		dst = append(dst, `,"previous":`...)
		if ev.Previous != nil {
			dst = append(dst, ev.Previous...)
		} else {
			// The old image has no older one to fill unchanged values from;
			// they are the same as in the new row, so fill from there.
			dst = ev.Table.AppendData(dst, ch.Relation, ch.Old, ch.New)
		}
	}
	return append(dst, '}')
}

// Settings are the delivery settings of a config, with their defaults.
type Settings struct {
	Timeout     time.Duration
	Retry       []time.Duration
	MaxInFlight int
	MaxPerHost  int
	History     int
}

// DefaultHistory is how many finished attempts are kept per subscription,
// and how many failures in a row suspend it, when the config is silent.
const DefaultHistory = 50

// DefaultRetry returns the default delays before each delivery attempt. It is
// a function, not a variable, so no caller can change the default for others.
func DefaultRetry() []time.Duration {
	return []time.Duration{
		0, 5 * time.Second, 5 * time.Minute, 30 * time.Minute,
		2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
	}
}

// SettingsFrom fills a config's delivery block with the defaults of what it
// leaves unset: the one place delivery defaults are applied.
func SettingsFrom(d mapping.Delivery) Settings {
	s := Settings{Timeout: d.Timeout, Retry: d.Retry, MaxInFlight: d.MaxInFlight, MaxPerHost: d.MaxPerHost, History: d.History}
	if s.Timeout <= 0 {
		s.Timeout = DefaultTimeout
	}
	if len(s.Retry) == 0 {
		s.Retry = DefaultRetry()
	}
	if s.MaxInFlight <= 0 {
		s.MaxInFlight = DefaultMaxInFlight
	}
	if s.MaxPerHost <= 0 {
		s.MaxPerHost = DefaultMaxPerHost
	}
	if s.History <= 0 {
		s.History = DefaultHistory
	}
	return s
}

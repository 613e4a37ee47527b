package deliver

import (
	"net/http"
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
}

// Dialects builds the dialects of a config; "default" and "zapier" always exist.
func Dialects(cfg *mapping.Config, version string) map[string]*Dialect {
	out := map[string]*Dialect{}
	ua := "walhook/" + version
	for name, dc := range cfg.Dialects {
		d := &Dialect{Name: name, Body: dc.Body, Method: dc.Method, UserAgent: dc.UserAgent, Header: http.Header{}, RateLimit: dc.RateLimit}
		if d.Body == "" {
			d.Body = mapping.BodyEnvelope
		}
		if d.Method == "" {
			d.Method = mapping.DefaultMethod
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
			out[name] = &Dialect{Name: name, Body: body, Method: mapping.DefaultMethod, UserAgent: ua, Header: http.Header{}}
			if name == mapping.DialectZapier {
				out[name].RateLimit = mapping.ZapierRateLimit
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

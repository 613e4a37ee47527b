package subs

import (
	"slices"
	"strings"
	"time"

	"github.com/walhook/walhook/internal/change"
)

// Subscription is the part of a walhook.subscriptions row the pipeline needs.
type Subscription struct {
	ID    string
	Owner string
	// Events are the names and patterns the subscription takes: an event
	// name, "noun.*", "*.verb" or "*". The column walhook.subscriptions.event
	// is only Events[0], kept for readers of the old single-event API.
	Events    []string
	TargetURL string
	Site      string
	Dialect   string
	Secret    string
	// PrevSecret keeps signing alongside Secret until PrevSecretUntil, after
	// walhook.rotate_secret().
	PrevSecret      string
	PrevSecretUntil time.Time
	Active          bool
}

// Kinds of entry in Subscription.Events, by how they are looked up.
const (
	kindName = iota // order.created
	kindNoun        // order.*: any event whose name starts with "order."
	kindVerb        // *.created: any event whose name ends with ".created"
	kindAll         // *
)

// key is one entry of a subscription's events at its site. name is the event
// name, noun or verb, by kind; for a lookup it is a substring of the event's
// name, so building a key does not allocate.
type key struct {
	kind       uint8
	name, site string
}

// entryKey returns the key an entry of Events is filed under.
func entryKey(entry, site string) key {
	switch {
	case entry == "*":
		return key{kindAll, "", site}
	case strings.HasSuffix(entry, ".*"):
		return key{kindNoun, entry[:len(entry)-2], site}
	case strings.HasPrefix(entry, "*."):
		return key{kindVerb, entry[2:], site}
	}
	return key{kindName, entry, site}
}

// Index finds the active subscriptions for an event at a set of sites.
// Subscriptions are filed once per entry of their Events, so a lookup costs
// four map reads per site (name, noun.*, *.verb, *) whatever the number of
// subscriptions or patterns.
type Index struct {
	byKey map[key][]*Subscription
	byID  map[string]*Subscription
	// filed counts the keys in byKey of each kind, so that an index
	// without patterns (or without one kind of them) skips those lookups.
	filed [kindAll + 1]int
}

// New returns an empty index.
func New() *Index {
	return &Index{byKey: map[key][]*Subscription{}, byID: map[string]*Subscription{}}
}

// Len returns the number of subscriptions known, active or not.
func (ix *Index) Len() int { return len(ix.byID) }

// Get returns a subscription by id, or nil.
func (ix *Index) Get(id string) *Subscription { return ix.byID[id] }

// Put adds or replaces a subscription.
func (ix *Index) Put(s *Subscription) {
	ix.Remove(s.ID)
	ix.byID[s.ID] = s
	if !s.Active {
		return
	}
	for _, k := range keysOf(s) {
		if len(ix.byKey[k]) == 0 {
			ix.filed[k.kind]++
		}
		ix.byKey[k] = append(ix.byKey[k], s)
	}
}

// keysOf returns the keys s is filed under, each once: the SQL API removes
// repeated entries, but a row written by hand may still have them, and
// order.* twice must not match twice.
func keysOf(s *Subscription) []key {
	keys := make([]key, 0, len(s.Events))
	for _, e := range s.Events {
		if k := entryKey(e, s.Site); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// Remove forgets a subscription.
func (ix *Index) Remove(id string) {
	old := ix.byID[id]
	if old == nil {
		return
	}
	delete(ix.byID, id)
	if !old.Active {
		return
	}
	for _, k := range keysOf(old) {
		ix.unfile(k, id)
	}
}

func (ix *Index) unfile(k key, id string) {
	list := ix.byKey[k]
	for i, s := range list {
		if s.ID == id {
			// Copy rather than splice in place: a caller may still hold the
			// slice Match returned.
			n := make([]*Subscription, 0, len(list)-1)
			n = append(n, list[:i]...)
			n = append(n, list[i+1:]...)
			list = n
			break
		}
	}
	if len(list) == 0 {
		if _, ok := ix.byKey[k]; ok {
			ix.filed[k.kind]--
		}
		delete(ix.byKey, k)
	} else {
		ix.byKey[k] = list
	}
}

// Match appends the active subscriptions to event at any of sites, each
// subscription once even when several of its entries match (order.created
// and order.*): one event is one request per subscription. Each site must be
// given once; AppendAncestors builds such a list.
func (ix *Index) Match(dst []*Subscription, event string, sites []string) []*Subscription {
	noun, verb := event, event
	if i := strings.IndexByte(event, '.'); i >= 0 {
		noun = event[:i]
		verb = event[strings.LastIndexByte(event, '.')+1:]
	}
	start := len(dst)
	for _, site := range sites {
		dst = append(dst, ix.byKey[key{kindName, event, site}]...)
		if ix.filed[kindNoun] > 0 {
			dst = ix.appendOnce(dst, start, key{kindNoun, noun, site})
		}
		if ix.filed[kindVerb] > 0 {
			dst = ix.appendOnce(dst, start, key{kindVerb, verb, site})
		}
		if ix.filed[kindAll] > 0 {
			dst = ix.appendOnce(dst, start, key{kindAll, "", site})
		}
	}
	return dst
}

// appendOnce appends the subscriptions filed under k that are not yet in
// dst[start:]. Only a subscription with more than one entry can already be
// there, so single-entry ones (most) skip the scan.
func (ix *Index) appendOnce(dst []*Subscription, start int, k key) []*Subscription {
	for _, s := range ix.byKey[k] {
		if len(s.Events) > 1 && contains(dst[start:], s) {
			continue
		}
		dst = append(dst, s)
	}
	return dst
}

func contains(list []*Subscription, s *Subscription) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// AppendSites appends to dst, once each, the sites of the active
// subscriptions: with Match, every active subscription to an event
// whatever its site. It walks the whole index: for rare events only (a
// TRUNCATE).
func (ix *Index) AppendSites(dst []string) []string {
	seen := map[string]bool{}
	for k := range ix.byKey {
		if !seen[k.site] {
			seen[k.site] = true
			dst = append(dst, k.site)
		}
	}
	return dst
}

// AppendAncestors appends site and each of its ancestors up to "/" to dst,
// skipping paths already in dst: the sites whose subscribers a change at site
// reaches.
func AppendAncestors(dst []string, site string) []string {
	for {
		found := false
		for _, s := range dst {
			if s == site {
				found = true
				break
			}
		}
		if !found {
			dst = append(dst, site)
		}
		if site == "/" || site == "" {
			return dst
		}
		i := strings.LastIndexByte(site, '/')
		if i <= 0 {
			site = "/"
		} else {
			site = site[:i]
		}
	}
}

// FromRow reads a subscription from a walhook.subscriptions row as the stream
// sent it. Unchanged (TOAST) values are taken from prev, the index's current
// copy. It returns "" for the id when the row has none.
func FromRow(rel *change.Relation, row change.Row, prev *Subscription) *Subscription {
	s := &Subscription{}
	if prev != nil {
		*s = *prev
	}
	var event string
	hasEvents := false // the relation has the events column
	for i, c := range rel.Columns {
		if c.Name == "events" {
			hasEvents = true
		}
		if i >= len(row) || row[i].Kind == change.Unchanged {
			continue
		}
		v := string(row[i].Text)
		if row[i].Kind == change.Null {
			v = ""
		}
		switch c.Name {
		case "id":
			s.ID = v
		case "owner":
			s.Owner = v
		case "event":
			event = v
		case "events":
			s.Events = ParseTextArray(v)
		case "target_url":
			s.TargetURL = v
		case "site":
			s.Site = v
		case "dialect":
			s.Dialect = v
		case "secret":
			s.Secret = v
		case "active":
			s.Active = v == "t"
		case "previous_secret":
			s.PrevSecret = v
		case "previous_secret_until":
			s.PrevSecretUntil = time.Time{}
			if v != "" {
				// The stream sends ISO timestamps in UTC ("2026-11-29 06:36:36.123+00").
				if t, err := time.Parse("2006-01-02 15:04:05.999999999-07", v); err == nil {
					s.PrevSecretUntil = t
				}
			}
		}
	}
	// A row from before the events column (WAL written before the upgrade,
	// replayed) names its one event in event.
	if !hasEvents && event != "" {
		s.Events = []string{event}
	}
	if s.Site == "" {
		s.Site = "/"
	}
	return s
}

// ParseTextArray parses PostgreSQL's text form of a one-dimensional text[]
// ({a,b,"c d"}), as the stream and the text protocol send it. NULL elements
// are left out.
func ParseTextArray(v string) []string {
	v = strings.TrimSpace(v)
	if len(v) < 2 || v[0] != '{' || v[len(v)-1] != '}' {
		return nil
	}
	body := v[1 : len(v)-1]
	out := []string{}
	var b strings.Builder
	quoted, inQuotes, escaped := false, false, false
	flush := func() {
		s := b.String()
		if quoted || s != "NULL" {
			out = append(out, s)
		}
		b.Reset()
		quoted = false
	}
	if body == "" {
		return out
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case escaped:
			b.WriteByte(c)
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			inQuotes = !inQuotes
			quoted = true
		case c == ',' && !inQuotes:
			flush()
		default:
			b.WriteByte(c)
		}
	}
	flush()
	return out
}

package subs

import (
	"strings"
	"time"

	"github.com/walhook/walhook/internal/change"
)

// Subscription is the part of a walhook.subscriptions row the pipeline needs.
type Subscription struct {
	ID        string
	Owner     string
	Event     string
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

type key struct{ event, site string }

// Index finds the active subscriptions for an event at a set of sites.
type Index struct {
	byKey map[key][]*Subscription
	byID  map[string]*Subscription
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
	if s.Active {
		k := key{s.Event, s.Site}
		ix.byKey[k] = append(ix.byKey[k], s)
	}
}

// Remove forgets a subscription.
func (ix *Index) Remove(id string) {
	old := ix.byID[id]
	if old == nil {
		return
	}
	delete(ix.byID, id)
	k := key{old.Event, old.Site}
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
		delete(ix.byKey, k)
	} else {
		ix.byKey[k] = list
	}
}

// Match appends the active subscriptions to event at any of sites. Each site
// must be given once; AppendAncestors builds such a list.
func (ix *Index) Match(dst []*Subscription, event string, sites []string) []*Subscription {
	for _, site := range sites {
		dst = append(dst, ix.byKey[key{event, site}]...)
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
	for i, c := range rel.Columns {
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
			s.Event = v
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
	if s.Site == "" {
		s.Site = "/"
	}
	return s
}

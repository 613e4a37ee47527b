package acl

import (
	"context"
	"fmt"
	"sync"

	"cel.dev/cel-go/common/types"
	"github.com/walhook/walhook/internal/expr"
)

// DefaultMaxOwners is the cache size NewOwners uses when given none.
const DefaultMaxOwners = 10_000

// Source loads owner attributes. The caller implements it by running the
// config's owners.query with the ids as $1; this package does no I/O.
type Source interface {
	// LoadOwners returns the attributes of each id it finds, keyed by id.
	// Ids it does not find are absent.
	LoadOwners(ctx context.Context, ids []string) (map[string]map[string]any, error)
}

// Owners caches owner attributes, converted once to the CEL values rules
// read, for at most maxEntries owners, evicting the least recently used.
// Owners that the Source does not find are cached too, as absent, so that a
// subscription whose owner is gone costs no query per row. Invalidate drops
// everything. Owners is safe for concurrent use.
type Owners struct {
	src Source
	max int

	mu      sync.Mutex
	gen     uint64 // incremented by Invalidate
	entries map[string]*ownerEntry
	// lru is a ring through a sentinel: lru.next is the most recently used.
	lru ownerEntry
}

type ownerEntry struct {
	id    string
	attrs map[string]any // nil: the Source does not know this owner
	prev  *ownerEntry
	next  *ownerEntry
}

// NewOwners returns an empty cache loading from src. A nil src stands for a
// config without an owners block: every owner then exists and has only its
// id. maxEntries <= 0 means DefaultMaxOwners.
func NewOwners(src Source, maxEntries int) *Owners {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxOwners
	}
	o := &Owners{src: src, max: maxEntries, entries: map[string]*ownerEntry{}}
	o.lru.next, o.lru.prev = &o.lru, &o.lru
	return o
}

// Get returns the attributes of each of ids that exists, keyed by id; ids not
// found are absent. Owners not cached are loaded in one Source call. Every
// attribute map has "id" set to its key, and its values are CEL values
// (see Value); the maps are shared and must not be modified. When loading
// fails Get returns the error and no attributes at all, so that a caller
// never judges a row with some owners missing for a reason other than their
// absence.
func (o *Owners) Get(ctx context.Context, ids []string) (map[string]map[string]any, error) {
	out := make(map[string]map[string]any, len(ids))
	var missing []string
	o.mu.Lock()
	for _, id := range ids {
		if e, ok := o.entries[id]; ok {
			o.touch(e)
			if e.attrs != nil {
				out[id] = e.attrs
			}
			continue
		}
		missing = append(missing, id)
	}
	gen := o.gen
	o.mu.Unlock()
	if len(missing) == 0 {
		return out, nil
	}
	missing = dedup(missing)

	var loaded map[string]map[string]any
	if o.src != nil {
		var err error
		if loaded, err = o.src.LoadOwners(ctx, missing); err != nil {
			return nil, fmt.Errorf("load %d owners: %w", len(missing), err)
		}
	}
	fresh := make(map[string]map[string]any, len(missing))
	for _, id := range missing {
		raw, found := loaded[id]
		if o.src != nil && !found {
			fresh[id] = nil
			continue
		}
		attrs := make(map[string]any, len(raw)+1)
		for k, v := range raw {
			attrs[k] = expr.Value(v)
		}
		// The subscription's owner is the id; a query returning another
		// spelling of it (a uuid cast differently) must not change owner.id.
		attrs["id"] = types.String(id)
		fresh[id] = attrs
		out[id] = attrs
	}

	o.mu.Lock()
	// A load that began before Invalidate may have read the old rows: hand
	// them to this caller, who asked before the change was seen, but do not
	// keep them for later ones.
	if o.gen == gen {
		for id, attrs := range fresh {
			o.put(id, attrs)
		}
	}
	o.mu.Unlock()
	return out, nil
}

// Invalidate drops every cached owner, e.g. because a watched table changed;
// the next Get loads again.
func (o *Owners) Invalidate() {
	o.mu.Lock()
	o.gen++
	clear(o.entries)
	o.lru.next, o.lru.prev = &o.lru, &o.lru
	o.mu.Unlock()
}

// Len returns the number of cached owners, counting those cached as absent.
func (o *Owners) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.entries)
}

// touch makes e the most recently used entry. o.mu is held.
func (o *Owners) touch(e *ownerEntry) {
	if o.lru.next == e {
		return
	}
	e.prev.next, e.next.prev = e.next, e.prev
	o.pushFront(e)
}

func (o *Owners) pushFront(e *ownerEntry) {
	e.prev, e.next = &o.lru, o.lru.next
	o.lru.next.prev = e
	o.lru.next = e
}

// put caches attrs for id, evicting the least recently used entries beyond
// the limit. o.mu is held.
func (o *Owners) put(id string, attrs map[string]any) {
	if e, ok := o.entries[id]; ok {
		// Loaded concurrently by another Get: keep the newer attributes.
		e.attrs = attrs
		o.touch(e)
		return
	}
	e := &ownerEntry{id: id, attrs: attrs}
	o.entries[id] = e
	o.pushFront(e)
	for len(o.entries) > o.max {
		last := o.lru.prev
		last.prev.next, o.lru.prev = &o.lru, last.prev
		delete(o.entries, last.id)
	}
}

// dedup removes repeated ids, keeping the first of each, so the Source is
// asked for each owner once.
func dedup(ids []string) []string {
	if len(ids) < 2 {
		return ids
	}
	seen := make(map[string]struct{}, len(ids))
	out := ids[:0]
	for _, id := range ids {
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}

package acl

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"cel.dev/cel-go/common/types"
)

// memSource is an in-memory Source recording each batch it is asked for. It
// stands in for the caller's owners.query, which is the interface this
// package declares, not a database.
type memSource struct {
	mu      sync.Mutex
	owners  map[string]map[string]any
	batches [][]string
	err     error
}

func (s *memSource) LoadOwners(_ context.Context, ids []string) (map[string]map[string]any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, slices.Clone(ids))
	if s.err != nil {
		return nil, s.err
	}
	out := map[string]map[string]any{}
	for _, id := range ids {
		if o, ok := s.owners[id]; ok {
			out[id] = o
		}
	}
	return out, nil
}

func (s *memSource) calls() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.batches)
}

func newMemSource() *memSource {
	return &memSource{owners: map[string]map[string]any{
		"u1": {"id": "u1", "tenants": []any{"acme"}, "admin": false},
		"u2": {"id": "u2", "tenants": []any{"globex"}, "admin": true},
		"u3": {"id": "U3-other-spelling", "tenants": []any{}},
	}}
}

func TestOwnersGet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := newMemSource()
	o := NewOwners(src, 0)

	got, err := o.Get(ctx, []string{"u1", "u2", "u1", "gone"})
	if err != nil {
		t.Fatalf("Get() = %v", err)
	}
	if len(got) != 2 || got["u1"] == nil || got["u2"] == nil {
		t.Fatalf("Get() = %v, want u1 and u2 only", got)
	}
	if calls := src.calls(); len(calls) != 1 || !slices.Equal(calls[0], []string{"u1", "u2", "gone"}) {
		t.Fatalf("LoadOwners calls = %v, want one batch [u1 u2 gone]", calls)
	}
	if got["u2"]["admin"] != types.True || got["u1"]["id"] != types.String("u1") {
		t.Errorf("Get()[u2] = %v, want CEL values with id set", got["u2"])
	}

	// Cached, including the absent owner: no second load.
	got, err = o.Get(ctx, []string{"u2", "gone"})
	if err != nil || len(got) != 1 || got["u2"] == nil {
		t.Fatalf("Get(cached) = %v, %v; want u2 only", got, err)
	}
	// Only the missing one is loaded.
	got, err = o.Get(ctx, []string{"u1", "u3"})
	if err != nil || len(got) != 2 {
		t.Fatalf("Get(u1, u3) = %v, %v; want both", got, err)
	}
	if calls := src.calls(); len(calls) != 2 || !slices.Equal(calls[1], []string{"u3"}) {
		t.Errorf("LoadOwners calls = %v, want a second batch [u3]", calls)
	}
	if got["u3"]["id"] != types.String("u3") {
		t.Errorf("Get()[u3][id] = %v, want the subscription's owner id u3", got["u3"]["id"])
	}
	if n := o.Len(); n != 4 {
		t.Errorf("Len() = %d, want 4 (u1, u2, u3 and absent gone)", n)
	}

	// Invalidate drops everything; the next Get reloads in one batch.
	src.mu.Lock()
	src.owners["gone"] = map[string]any{"tenants": []any{"acme"}}
	src.mu.Unlock()
	o.Invalidate()
	if n := o.Len(); n != 0 {
		t.Errorf("Len() after Invalidate = %d, want 0", n)
	}
	got, err = o.Get(ctx, []string{"u1", "gone"})
	if err != nil || len(got) != 2 {
		t.Fatalf("Get() after Invalidate = %v, %v; want u1 and gone", got, err)
	}
	if calls := src.calls(); len(calls) != 3 || !slices.Equal(calls[2], []string{"u1", "gone"}) {
		t.Errorf("LoadOwners calls = %v, want a third batch [u1 gone]", calls)
	}
}

func TestOwnersError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := newMemSource()
	o := NewOwners(src, 0)
	if _, err := o.Get(ctx, []string{"u1"}); err != nil {
		t.Fatalf("Get() = %v", err)
	}
	boom := errors.New("connection reset")
	src.err = boom
	// u1 is cached but u2 is not: no partial answer.
	got, err := o.Get(ctx, []string{"u1", "u2"})
	if !errors.Is(err, boom) || got != nil {
		t.Fatalf("Get() = %v, %v; want nil and %v", got, err, boom)
	}
	if n := o.Len(); n != 1 {
		t.Errorf("Len() = %d, want 1: a failed load caches nothing", n)
	}
}

func TestOwnersEviction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := newMemSource()
	o := NewOwners(src, 2)
	if _, err := o.Get(ctx, []string{"u1", "u2"}); err != nil {
		t.Fatal(err)
	}
	// Touch u1 so that u2 is the least recently used.
	if _, err := o.Get(ctx, []string{"u1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Get(ctx, []string{"u3"}); err != nil {
		t.Fatal(err)
	}
	if n := o.Len(); n != 2 {
		t.Errorf("Len() = %d, want 2", n)
	}
	before := len(src.calls())
	if _, err := o.Get(ctx, []string{"u1", "u3"}); err != nil {
		t.Fatal(err)
	}
	if after := len(src.calls()); after != before {
		t.Errorf("Get(u1, u3) loaded again; want both cached")
	}
	if _, err := o.Get(ctx, []string{"u2"}); err != nil {
		t.Fatal(err)
	}
	if calls := src.calls(); !slices.Equal(calls[len(calls)-1], []string{"u2"}) {
		t.Errorf("LoadOwners calls = %v, want u2 reloaded after eviction", calls)
	}

	// A batch larger than the cache is still answered in full.
	got, err := NewOwners(src, 1).Get(ctx, []string{"u1", "u2", "u3"})
	if err != nil || len(got) != 3 {
		t.Errorf("Get(3 owners, cache of 1) = %v, %v; want all 3", got, err)
	}
}

func TestOwnersWithoutSource(t *testing.T) {
	t.Parallel()
	// No owners block: every owner exists with only its id.
	o := NewOwners(nil, 0)
	got, err := o.Get(context.Background(), []string{"a", "b"})
	if err != nil || len(got) != 2 || got["a"]["id"] != types.String("a") || len(got["a"]) != 1 {
		t.Errorf("Get() = %v, %v; want a and b with only id", got, err)
	}
}

// blockingSource blocks each load until released, to interleave Invalidate.
type blockingSource struct {
	started chan struct{}
	release chan struct{}
}

func (s *blockingSource) LoadOwners(_ context.Context, ids []string) (map[string]map[string]any, error) {
	s.started <- struct{}{}
	<-s.release
	out := map[string]map[string]any{}
	for _, id := range ids {
		out[id] = map[string]any{"v": 1}
	}
	return out, nil
}

func TestOwnersInvalidateDuringLoad(t *testing.T) {
	t.Parallel()
	src := &blockingSource{started: make(chan struct{}), release: make(chan struct{})}
	o := NewOwners(src, 0)
	var (
		wg  sync.WaitGroup
		got map[string]map[string]any
		err error
	)
	wg.Go(func() { got, err = o.Get(context.Background(), []string{"u1"}) })
	<-src.started
	o.Invalidate() // a watched table changed while the query ran
	close(src.release)
	wg.Wait()
	if err != nil || got["u1"] == nil {
		t.Fatalf("Get() = %v, %v; want u1", got, err)
	}
	if n := o.Len(); n != 0 {
		t.Errorf("Len() = %d, want 0: a load begun before Invalidate must not be cached", n)
	}
}

func TestOwnersConcurrent(t *testing.T) {
	t.Parallel()
	src := newMemSource()
	o := NewOwners(src, 2)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				if g == 0 && i%50 == 0 {
					o.Invalidate()
				}
				got, err := o.Get(context.Background(), []string{"u1", "u2", "u3", "gone"})
				if err != nil || len(got) != 3 {
					t.Errorf("Get() = %v, %v; want 3 owners", got, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

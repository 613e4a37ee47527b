package walhook

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/metrics"
	"github.com/walhook/walhook/mapping"
)

// ownerLoader loads owner attributes with the config's owners.query. Without
// an owners block every owner exists and has only its id.
type ownerLoader struct {
	db  *pgxpool.Pool
	cfg *mapping.Owners
	m   *metrics.Metrics // counts owners loaded; nil for none
}

func (s ownerLoader) LoadOwners(ctx context.Context, ids []string) (map[string]map[string]any, error) {
	out := make(map[string]map[string]any, len(ids))
	if s.cfg == nil || s.cfg.Query == "" {
		for _, id := range ids {
			out[id] = map[string]any{"id": id}
		}
		return out, nil
	}
	rows, err := s.db.Query(ctx, s.cfg.Query, ids)
	if err != nil {
		return nil, fmt.Errorf("owners.query (line %d): %w", s.cfg.QueryLine, err)
	}
	defer rows.Close()
	for rows.Next() {
		m, err := pgx.RowToMap(rows)
		if err != nil {
			return nil, fmt.Errorf("owners.query (line %d): %w", s.cfg.QueryLine, err)
		}
		id, ok := m["id"].(string)
		if !ok {
			return nil, fmt.Errorf("owners.query (line %d): want a text column named id, got %T", s.cfg.QueryLine, m["id"])
		}
		out[id] = m
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("owners.query (line %d): %w", s.cfg.QueryLine, err)
	}
	if s.m != nil {
		s.m.OwnersLoaded.Add(float64(len(out)))
	}
	return out, nil
}

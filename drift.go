package walhook

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
)

// Drift: the publication is walhook's, but anyone with the rights can
// change it, and every change to it changes what the slot sends. The leader
// checks it at start and every Config.DriftInterval, and heals it: what was
// not published in between is lost to the stream, so it says so loudly.

// DefaultDriftInterval is how often the leader checks the publication.
const DefaultDriftInterval = 10 * time.Second

// errIndexStale restarts the pipeline after walhook.subscriptions was out
// of the publication: the index missed subscription changes and is rebuilt
// from the table.
var errIndexStale = errors.New("walhook.subscriptions was out of the publication: the subscription index is rebuilt from the table")

// publicationTables are the tables the publication must cover.
func (s *Service) publicationTables() []string {
	return publicationTables(s.cfg.Mapping, s.mapper)
}

// drift compares the publication with what the config needs. It returns
// what differs, one line each, and whether walhook.subscriptions was
// missing. A missing publication is an error: the slot cannot go on.
func (s *Service) drift(ctx context.Context, conn *pgx.Conn) (lines []string, subsMissing bool, err error) {
	var ins, upd, del, trunc, viaRoot bool
	err = conn.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1`, s.cfg.Publication).
		Scan(&ins, &upd, &del, &trunc, &viaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, publicationDropped(s.cfg.Publication, s.cfg.Slot, nil)
	}
	if err != nil {
		return nil, false, fmt.Errorf("read publication %s: %w", s.cfg.Publication, err)
	}
	for _, op := range []struct {
		name string
		on   bool
		want bool
	}{{"insert", ins, true}, {"update", upd, true}, {"delete", del, true}, {"truncate", trunc, s.mapper.Truncates()}} {
		// Truncates published without a table that maps them are ignored:
		// no drift.
		if op.want && !op.on {
			lines = append(lines, fmt.Sprintf("publication %s does not publish %ss", s.cfg.Publication, op.name))
		}
	}
	if !viaRoot {
		// A mapped partitioned table's changes then arrive under its
		// partitions' names, which map to nothing.
		lines = append(lines, fmt.Sprintf("publication %s does not publish partitions via their partitioned table", s.cfg.Publication))
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, s.cfg.Publication)
	if err != nil {
		return nil, false, fmt.Errorf("read tables of publication %s: %w", s.cfg.Publication, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, false, fmt.Errorf("read tables of publication %s: %w", s.cfg.Publication, err)
	}
	for _, t := range s.publicationTables() {
		if slices.Contains(have, t) {
			continue
		}
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, quoteTable(t)).Scan(&exists); err != nil {
			return nil, false, fmt.Errorf("look up %s: %w", t, err)
		}
		if !exists {
			// Dropped or renamed: not something a publication can cover.
			continue
		}
		lines = append(lines, fmt.Sprintf("publication %s does not cover %s", s.cfg.Publication, t))
		if t == cdc.SubscriptionsTable {
			subsMissing = true
		}
	}
	return lines, subsMissing, nil
}

// publicationDropped explains a dropped publication: the slot decodes with
// the catalog as it was at each change, so it cannot go past the drop even
// once the publication exists again.
func publicationDropped(pub, slot string, err error) error {
	return &PublicationDroppedError{Publication: pub, Slot: slot, Err: err}
}

// PublicationDroppedError means the publication is gone: Run stops, since
// no restart can cure it.
type PublicationDroppedError struct {
	Publication, Slot string
	Err               error // what reported it; nil when the check found it
}

func (e *PublicationDroppedError) Error() string {
	msg := fmt.Sprintf("publication %s was dropped: slot %s cannot decode past the drop, even after the publication is created again. "+
		"Recreate the slot: walhook install --recreate-slot --slot %s (changes since the drop are not delivered)", e.Publication, e.Slot, e.Slot)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *PublicationDroppedError) Unwrap() error { return e.Err }

// isPublicationMissing reports the walsender's error for a publication that
// no longer exists.
func isPublicationMissing(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42704" && strings.Contains(pgErr.Message, "publication")
}

// watchDrift checks the publication every DriftInterval until ctx
// ends, healing what drifted. It returns errIndexStale when
// walhook.subscriptions was missing (after healing), and the error of a
// dropped publication.
func (s *Service) watchDrift(ctx context.Context, db *pgxpool.Pool) error {
	// The pipeline checked once before it started streaming.
	t := time.NewTicker(s.cfg.DriftInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.checkDrift(ctx, db); err != nil {
			return err
		}
	}
}

func (s *Service) checkDrift(ctx context.Context, db *pgxpool.Pool) error {
	var lines []string
	var subsMissing bool
	err := withConn(ctx, db, func(conn *pgx.Conn) error {
		var err error
		if lines, subsMissing, err = s.drift(ctx, conn); err != nil || len(lines) == 0 {
			return err
		}
		_, err = cdc.EnsurePublication(ctx, conn, s.cfg.Publication, s.publicationTables(), s.mapper.Truncates())
		return err
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return nil
	case err != nil && len(lines) > 0:
		// Seen but not healed (the run role may not own the publication).
		s.log.Error("the publication drifted and could not be healed: run walhook install with this config",
			"publication", s.cfg.Publication, "drift", strings.Join(lines, "; "), "err", err)
		s.state.failed(fmt.Errorf("publication drifted: %s", strings.Join(lines, "; ")))
		return nil
	case err != nil:
		var dropped *PublicationDroppedError
		if errors.As(err, &dropped) {
			return err
		}
		s.log.Warn("check the publication; trying again later", "err", err)
		return nil
	case len(lines) == 0:
		return nil
	}
	s.log.Error("the publication drifted; healed. Changes it did not publish in the meantime were not streamed and are not delivered",
		"publication", s.cfg.Publication, "drift", strings.Join(lines, "; "))
	if subsMissing {
		return errIndexStale
	}
	return nil
}

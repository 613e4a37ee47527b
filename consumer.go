package walhook

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
)

// consumer applies stream messages in commit order: subscription changes
// to the index (and its log), owner changes to the owner cache, the
// writer's active sites, and every other change to the router. It seals
// each transaction at its commit.
type consumer struct {
	router  *router
	owners  *acl.Owners
	watched map[string]bool // tables whose changes refresh owner attributes
	mapper  *mapping.Mapper
	idx     *subs.Index
	db      *pgxpool.Pool
	log     *slog.Logger
	// state is the owners' attributes as of the stream's position; nil
	// without an owners block (or an installation older than it).
	state *ownerState
	// removeOnDelete, when set, removes an owner's subscriptions when its
	// row is deleted from that table (owners.remove_on_delete).
	removeOnDelete *mapping.RemoveOnDelete
	// beforeRoute is a test hook; nil in production.
	beforeRoute func()

	// backfill runs backfills; the consumer places their chunks in the
	// stream at their watermarks.
	backfill *backfiller

	// moves pairs a row's move between partitions back into one update.
	moves *movePairer

	// digest is the running config's: an install of another one ends the
	// pipeline (errReinstalled).
	digest string

	// startedAt is when the pipeline asked for every held delivery to be
	// judged again.
	startedAt time.Time
	// releaseAfterCommit: the open transaction called release_held().
	releaseAfterCommit bool

	// skipSubsBefore: subscription changes that committed before it are
	// already in the index, rebuilt from the table (subs.Rebuild), and must
	// not be applied again.
	skipSubsBefore pglogrepl.LSN

	// The open transaction's state: only one is open at a time.
	txSites []string
	entries []subs.Entry
}

func (s *Service) newConsumer(db *pgxpool.Pool, idx *subs.Index, out submitter, relIDs map[uint32]string, state *ownerState) *consumer {
	watched := map[string]bool{}
	oc := s.cfg.Mapping.Owners
	var removeOn *mapping.RemoveOnDelete
	if oc != nil {
		for _, t := range oc.Watch {
			watched[t] = true
		}
		removeOn = oc.RemoveOnDelete
	}
	owners := acl.NewOwners(ownerLoader{db: db, cfg: oc, m: s.metrics}, 0)
	log := s.log.With("component", "pipeline")
	var src ownerSource = owners
	if state != nil {
		// Owners as of each change, from the stream; the live cache only
		// for an owner the state does not know.
		state.fallback, state.log = owners, log
		src = state
	}
	r := newRouter(s.mapper, s.rules, idx, src, out, pgStore{db}, s.dialects, log, s.metrics)
	r.holder = pgHolder{db}
	for id, name := range relIDs {
		if t := s.mapper.Table(name); t != nil {
			r.byRel[id] = t
		}
	}
	return &consumer{
		router:         r,
		owners:         owners,
		watched:        watched,
		mapper:         s.mapper,
		idx:            idx,
		db:             db,
		log:            log,
		removeOnDelete: removeOn,
		state:          state,
		beforeRoute:    s.hooks.route,
		moves:          newMovePairer(r.route, r.table, db),
		digest:         s.digest,
	}
}

// releaseAfter is how soon after its start the consumer judges again the
// held deliveries the start asked to release.
const releaseAfter = time.Second

// run consumes until stop ends; deliveries use work, which outlives stop so
// that they can finish during a drain. It judges held deliveries again on
// this goroutine, so that they see the subscription index and the owners as
// they stand: once soon after the start (which may run a fixed config), and
// after each commit of walhook.release_held(), which the stream announces.
func (c *consumer) run(stop, work context.Context, msgs <-chan cdc.Message) error {
	inTx := false
	tick := time.NewTicker(releaseAfter)
	defer tick.Stop()
	for {
		select {
		case <-stop.Done():
			return c.finishTx(work, msgs, inTx)
		case m := <-msgs:
			if err := c.handle(work, m); err != nil {
				return err
			}
			inTx = m.Kind != cdc.KindCommit
		case <-tick.C:
			if inTx {
				continue
			}
			tick.Stop()
			if err := c.releaseAll(work, &c.startedAt); err != nil {
				return err
			}
		}
	}
}

// releaseAll judges again every held delivery whose release was asked for,
// a batch at a time. Only a database that went away is an error.
func (c *consumer) releaseAll(ctx context.Context, until *time.Time) error {
	for {
		n, err := c.releaseHeld(ctx, until)
		if err != nil {
			if transient(err) {
				return err
			}
			c.log.Warn("judge held deliveries again; trying later", "err", err)
			return nil
		}
		if n < releaseBatch || ctx.Err() != nil {
			return nil
		}
	}
}

// releaser is a router for judging held deliveries again: it shares the
// index, rules and owners, and hands its requests and holds to the caller.
func (c *consumer) releaser(out submitter) *router {
	r := c.router
	rr := newRouter(r.mapper, r.rules, r.idx, r.owners, out, r.store, r.dialects, r.log, r.metrics)
	rr.holdLog, rr.byRel, rr.renamed, rr.pks = r.holdLog, r.byRel, r.renamed, r.pks
	return rr
}

// finishTx runs on stop: a transaction whose commit is already buffered is
// finished, so that a graceful stop does not leave it to be sent again after
// the restart. The stream has stopped, so nothing more arrives; a commit not
// yet received leaves the transaction unacknowledged, and it is replayed.
func (c *consumer) finishTx(work context.Context, msgs <-chan cdc.Message, inTx bool) error {
	for inTx {
		select {
		case m := <-msgs:
			if err := c.handle(work, m); err != nil {
				return err
			}
			inTx = m.Kind != cdc.KindCommit
		default:
			return nil
		}
	}
	return nil
}

func (c *consumer) handle(ctx context.Context, m cdc.Message) error {
	if err := c.moves.flush(ctx, m); err != nil {
		return err
	}
	switch m.Kind {
	case cdc.KindSite:
		c.txSites = append(c.txSites, mapping.CleanSite(m.Site))
	case cdc.KindRelease:
		c.releaseAfterCommit = true
	case cdc.KindBackfill:
		if c.backfill != nil {
			return c.backfill.message(ctx, c, m)
		}
	case cdc.KindInstall:
		if m.Site == c.digest {
			return nil
		}
		// A replay may bring an older install's announcement: what counts
		// is the config installed now.
		installed, err := installedDigest(ctx, c.db)
		if err != nil {
			return err
		}
		if installed != "" && installed != c.digest {
			// Not sealed: the install's transaction is replayed to the next
			// pipeline, which runs the installed config or stops.
			return errReinstalled
		}
	case cdc.KindChange:
		rel := m.Change.Relation
		if m.Change.Op == change.Truncate {
			return c.truncate(ctx, m)
		}
		if rel.Schema == "walhook" && rel.Name == "owner_state" {
			if c.state == nil {
				return nil
			}
			return c.state.apply(m.Change)
		}
		if rel.Schema == "walhook" && rel.Name == "subscriptions" {
			if m.Txn.CommitLSN >= c.skipSubsBefore {
				c.applySubscription(m.Change)
			}
			return nil
		}
		if c.watched[rel.QualifiedName()] {
			// Owner attributes changed at this point of the stream: every
			// change after it is judged with freshly loaded ones.
			c.owners.Invalidate()
			if r := c.removeOnDelete; r != nil && m.Change.Op == change.Delete && rel.QualifiedName() == r.Table {
				if err := c.removeOwner(ctx, m.Change); err != nil {
					return err
				}
			}
		}
		if c.backfill != nil {
			c.backfill.saw(c, m.Change)
		}
		if c.beforeRoute != nil {
			c.beforeRoute()
		}
		return c.moves.routeChange(ctx, m.Txn, m.Change, c.txSites)
	case cdc.KindCommit:
		if c.state != nil {
			if err := c.state.writeLog(ctx, c.db, m.Txn.EndLSN); err != nil {
				return err
			}
		}
		if len(c.entries) > 0 {
			if err := subs.WriteLog(ctx, c.db, m.Txn.EndLSN, c.entries); err != nil {
				return err
			}
			clear(c.entries)
			c.entries = c.entries[:0]
		}
		c.txSites = c.txSites[:0]
		m.Txn.Seal()
		if c.releaseAfterCommit {
			// walhook.release_held() committed: judge again now, with the
			// owners it refreshed applied.
			c.releaseAfterCommit = false
			return c.releaseAll(ctx, nil)
		}
	}
	return nil
}

// truncate takes a TRUNCATE of one table, streamed because some table maps
// truncate: the router sends the table's truncate event if it has one, and
// ignores the others (a table without the verb, as when truncates are not
// published). walhook's own tables are never truncated by walhook; a
// TRUNCATE of them by hand is logged, not applied.
func (c *consumer) truncate(ctx context.Context, m cdc.Message) error {
	rel := m.Change.Relation
	if rel.Schema == "walhook" {
		c.log.Warn("a walhook table was truncated; ignored (restart walhook to load walhook.subscriptions again)",
			"table", rel.QualifiedName(), "lsn", m.Txn.CommitLSN.String())
		return nil
	}
	if c.watched[rel.QualifiedName()] {
		// Owners' attributes may have gone with the rows. remove_on_delete
		// acts on deletes only: a TRUNCATE removes no subscriptions.
		c.owners.Invalidate()
	}
	if c.backfill != nil {
		c.backfill.saw(c, m.Change)
	}
	return c.moves.routeChange(ctx, m.Txn, m.Change, c.txSites)
}

func (c *consumer) applySubscription(ch *change.Change) {
	switch ch.Op {
	case change.Insert, change.Update:
		var prev *subs.Subscription
		if id := subs.FromRow(ch.Relation, ch.New, nil).ID; id != "" {
			prev = c.idx.Get(id)
		}
		s := subs.FromRow(ch.Relation, ch.New, prev)
		if ch.Op == change.Update && ch.Old != nil {
			if old := subs.FromRow(ch.Relation, ch.Old, prev); old.ID != "" && old.ID != s.ID {
				c.idx.Remove(old.ID)
				c.entries = append(c.entries, subs.Entry{ID: old.ID, Deleted: true})
			}
		}
		c.idx.Put(s)
		c.entries = append(c.entries, subs.Entry{ID: s.ID, Sub: s})
	case change.Delete:
		if s := subs.FromRow(ch.Relation, ch.Old, nil); s.ID != "" {
			c.idx.Remove(s.ID)
			c.entries = append(c.entries, subs.Entry{ID: s.ID, Deleted: true})
		}
	}
}

// removeOwner removes the subscriptions of an owner whose row was deleted
// from owners.remove_on_delete's table, taking the owner's id from its
// column.
func (c *consumer) removeOwner(ctx context.Context, ch *change.Change) error {
	i := ch.Relation.ColumnIndex(c.removeOnDelete.Column)
	if i < 0 || i >= len(ch.Old) || ch.Old[i].Kind != change.Text {
		return nil
	}
	id := string(ch.Old[i].Text)
	var n int
	if err := c.db.QueryRow(ctx, `SELECT walhook.remove_owner($1)`, id).Scan(&n); err != nil {
		return fmt.Errorf("remove subscriptions of deleted owner %s: %w", id, err)
	}
	if n > 0 {
		c.log.Info("removed the subscriptions of a deleted owner", "owner", id, "subscriptions", n)
	}
	return nil
}

// mappedRelations returns the relation id of each mapped table that exists,
// so that a table renamed while walhook was stopped is still followed.
func (s *Service) mappedRelations(ctx context.Context, db *pgxpool.Pool) (map[uint32]string, error) {
	out := map[uint32]string{}
	for _, t := range s.mapper.Tables() {
		var oid *uint32
		if err := db.QueryRow(ctx, `SELECT to_regclass($1)::oid`, quoteTable(t)).Scan(&oid); err != nil {
			return nil, fmt.Errorf("look up %s: %w", t, err)
		}
		if oid != nil {
			out[*oid] = t
		}
	}
	return out, nil
}

// ordersByKey reports whether a dialect has ordering: key, the only user
// of the mapped tables' primary keys.
func (s *Service) ordersByKey() bool {
	for _, d := range s.dialects {
		if d.OrderByKey {
			return true
		}
	}
	return false
}

// primaryKeys returns the primary key columns of the mapped tables that
// have one, which ordering: key orders rows by when a table sets no key:.
func (s *Service) primaryKeys(ctx context.Context, db *pgxpool.Pool) (map[string][]string, error) {
	names := make([]string, 0, len(s.mapper.Tables()))
	for _, t := range s.mapper.Tables() {
		names = append(names, quoteTable(t))
	}
	rows, err := db.Query(ctx, `SELECT t.name, array_agg(a.attname::text ORDER BY k.n)
		FROM unnest($1::text[]) AS t(name)
		JOIN pg_index i ON i.indrelid = to_regclass(t.name) AND i.indisprimary
		CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		GROUP BY t.name`, names)
	if err != nil {
		return nil, fmt.Errorf("look up primary keys: %w", err)
	}
	byQuoted := map[string]string{}
	for _, t := range s.mapper.Tables() {
		byQuoted[quoteTable(t)] = t
	}
	out := map[string][]string{}
	var name string
	var cols []string
	if _, err := pgx.ForEachRow(rows, []any{&name, &cols}, func() error {
		out[byQuoted[name]] = cols
		return nil
	}); err != nil {
		return nil, fmt.Errorf("look up primary keys: %w", err)
	}
	return out, nil
}

// pgStore is the router's subscriptionStore on the database.
type pgStore struct{ db *pgxpool.Pool }

func (p pgStore) Deactivate(ctx context.Context, id, message string) error {
	_, err := p.db.Exec(ctx, `UPDATE walhook.subscriptions SET active = false, status_message = $2, updated_at = now()
		WHERE id = $1 AND active`, id, message)
	return err
}

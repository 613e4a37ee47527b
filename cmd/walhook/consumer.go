package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/metrics"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
)

// consumer turns stream messages into deliveries, in commit order.
type consumer struct {
	rules    *acl.Rules
	owners   *acl.Owners
	watched  map[string]bool // tables whose changes refresh owner attributes
	mapper   *mapping.Mapper
	idx      *subs.Index
	worker   *deliver.Worker
	dialects map[string]*deliver.Dialect
	db       *pgxpool.Pool
	log      *slog.Logger
	metrics  *metrics.Metrics

	// Scratch space reused for every change.
	events     []mapping.Event
	ownerIDs   []string
	allowed    map[string]bool
	allowedOld map[string]bool
	sent       map[string]bool // coalescing keys already sent for the event
	// missing counts, per subscription, changes in a row withheld because
	// its owner could not be found.
	missing        map[string]int
	removeOnDelete bool
	ownersFound    map[string]map[string]any // the last judge's owners
	matched        []*subs.Subscription
	sites          []string
	// The open transaction's state: only one is open at a time.
	txSites []string
	entries []subs.Entry
}

// run consumes until stop ends; deliveries use work, which outlives stop so
// that they can finish during a drain.
func (c *consumer) run(stop, work context.Context, msgs <-chan cdc.Message) error {
	inTx := false
	for {
		select {
		case <-stop.Done():
			return c.finishTx(work, msgs, inTx)
		case m := <-msgs:
			if err := c.handle(work, m); err != nil {
				return err
			}
			inTx = m.Kind != cdc.KindCommit
		}
	}
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
	switch m.Kind {
	case cdc.KindSite:
		c.txSites = append(c.txSites, mapping.CleanSite(m.Site))
	case cdc.KindChange:
		if rel := m.Change.Relation; rel.Schema == "walhook" && rel.Name == "subscriptions" {
			c.applySubscription(m.Change)
			return nil
		}
		if c.watched[m.Change.Relation.QualifiedName()] {
			// Owner attributes changed at this point of the stream: every
			// change after it is judged with freshly loaded ones.
			c.owners.Invalidate()
			if m.Change.Op == change.Delete && c.removeOnDelete {
				if err := c.removeOwner(ctx, m.Change); err != nil {
					return err
				}
			}
			if c.mapper.Table(m.Change.Relation.QualifiedName()) == nil {
				return nil
			}
		}
		return c.dispatch(ctx, m.Txn, m.Change)
	case cdc.KindCommit:
		if len(c.entries) > 0 {
			if err := subs.WriteLog(ctx, c.db, m.Txn.EndLSN, c.entries); err != nil {
				return err
			}
			clear(c.entries)
			c.entries = c.entries[:0]
		}
		c.txSites = c.txSites[:0]
		m.Txn.Seal()
	}
	return nil
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

func (c *consumer) dispatch(ctx context.Context, txn *cdc.Txn, ch *change.Change) error {
	c.events = c.mapper.Map(c.events[:0], ch)
	t := c.mapper.Table(ch.Relation.QualifiedName())
	if t == nil {
		return nil
	}
	site := t.Site(ch)
	var in *acl.Input // built on first need: most changes match no subscription
	input := func() *acl.Input {
		if in == nil {
			in = acl.InputFor(ch, site)
		}
		return in
	}
	for _, d := range t.Derived {
		if ch.Op.String() != d.On {
			continue
		}
		ok, err := c.rules.When(d.Name, input())
		if err != nil {
			c.log.Debug("derived event condition failed; not produced", "event", d.Name, "err", err)
			c.metrics.RuleErrors.WithLabelValues(metrics.RuleEvent).Inc()
		}
		if ok {
			c.events = append(c.events, mapping.Event{
				ID: mapping.EventID(ch.Tx.Source, uint64(ch.Tx.CommitLSN), ch.Seq, d.Name), Name: d.Name, Table: t, Change: ch})
		}
	}
	c.metrics.EventsProduced.Add(float64(len(c.events)))
	if len(c.events) > 0 && c.rules.HasPayload(t.Name) {
		c.payload(t.Name, input())
	}
	for i := range c.events {
		ev := &c.events[i]
		c.sites = subs.AppendAncestors(c.sites[:0], site)
		for _, s := range c.txSites {
			c.sites = subs.AppendAncestors(c.sites, s)
		}
		c.matched = c.idx.Match(c.matched[:0], ev.Name, c.sites)
		if len(c.matched) == 0 {
			continue
		}
		if err := c.judge(ctx, t.Name, ch, input); err != nil {
			return err
		}
		// One body per dialect and visibility of the old row for this event,
		// shared by its subscriptions.
		var bodies map[string][]byte
		clear(c.sent)
		for _, s := range c.matched {
			if !c.allowed[s.Owner] {
				c.metrics.ACLDenials.Inc()
				if err := c.ownerMissing(ctx, s); err != nil {
					return err
				}
				continue
			}
			delete(c.missing, s.ID)
			// Subscriptions that share a target, dialect and secret get one
			// request for the event: the receiver asked for it once per
			// destination, and any of its owners may see the row.
			ck := s.TargetURL + "\x00" + s.Dialect + "\x00" + s.Secret
			if c.sent[ck] {
				continue
			}
			c.sent[ck] = true
			d := c.dialects[s.Dialect]
			if d == nil {
				d = c.dialects[mapping.DialectDefault]
			}
			withPrev := c.allowedOld == nil || c.allowedOld[s.Owner]
			bk := d.Name
			if !withPrev {
				bk += "\x00noprev"
			}
			body, ok := bodies[bk]
			if !ok {
				body = d.AppendBody(nil, ev, site, withPrev)
				if bodies == nil {
					bodies = map[string][]byte{}
				}
				bodies[bk] = body
			}
			key := c.key(s.ID, s.Secret)
			var prevKey []byte
			if key != nil && s.PrevSecret != "" && time.Now().Before(s.PrevSecretUntil) {
				prevKey = c.key(s.ID, s.PrevSecret)
			}
			txn.Add(1)
			err := c.worker.Submit(ctx, &deliver.Request{
				SubscriptionID: s.ID,
				EventID:        ev.ID,
				Event:          ev.Name,
				URL:            s.TargetURL,
				Method:         d.Method,
				UserAgent:      d.UserAgent,
				Header:         d.Header,
				Body:           body,
				Key:            key,
				PrevKey:        prevKey,
				RateLimit:      d.RateLimit,
				Dialect:        d.Name,
				Attempt:        1,
				Committed:      txn.CommitTime,
				Done:           txn.Done,
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// payload builds the body's data (and previous) for this change's events
// with the table's payload expression. One that fails to evaluate falls back
// to the row's columns, filtered as configured: a change is never dropped for
// its shape.
func (c *consumer) payload(table string, in *acl.Input) {
	data, err := c.rules.Payload(table, in)
	if err != nil {
		c.log.Warn("payload expression failed; sending the row's columns", "table", table, "err", err)
		return
	}
	var prev []byte
	if in.Op == change.Update && in.Old != nil {
		old := *in
		old.New = in.Old
		if prev, err = c.rules.Payload(table, &old); err != nil {
			prev = nil
		}
	}
	for i := range c.events {
		c.events[i].Data, c.events[i].Previous = data, prev
	}
}

// judge decides, once per owner of the matched subscriptions, whether the
// owner may see the row (allowed) and, for updates with an old row, the old
// row too (allowedOld; nil when there is no old row to show). Owners are
// loaded in one batch; an owner that cannot be found sees nothing.
func (c *consumer) judge(ctx context.Context, table string, ch *change.Change, input func() *acl.Input) error {
	if c.allowed == nil {
		c.allowed = map[string]bool{}
	}
	if c.rules.AlwaysAllows(table) {
		// acl: "true": no owner to load, no row to bind.
		clear(c.allowed)
		for _, s := range c.matched {
			c.allowed[s.Owner] = true
		}
		c.allowedOld = nil
		return nil
	}
	in := input()
	c.ownerIDs = c.ownerIDs[:0]
	for _, s := range c.matched {
		c.ownerIDs = append(c.ownerIDs, s.Owner)
	}
	owners, err := c.owners.Get(ctx, c.ownerIDs)
	if err != nil {
		return fmt.Errorf("load owners: %w", err)
	}
	c.ownersFound = owners
	if failed, err := c.rules.AllowMany(table, in, owners, c.allowed); failed > 0 {
		c.log.Debug("acl rule failed; denied", "table", table, "owners", failed, "err", err)
		c.metrics.RuleErrors.WithLabelValues(metrics.RuleACL).Add(float64(failed))
	}
	c.allowedOld = nil
	if ch.Op == change.Update && in.Old != nil {
		old := *in
		old.New, old.Op = in.Old, change.Update
		c.allowedOld = map[string]bool{}
		_, _ = c.rules.AllowMany(table, &old, owners, c.allowedOld)
	}
	return nil
}

// key decodes a secret; an unusable one sends unsigned, with a warning.
func (c *consumer) key(sub, secret string) []byte {
	if secret == "" {
		return nil
	}
	k, err := deliver.SecretKey(secret)
	if err != nil {
		c.log.Warn("subscription secret unusable; sending unsigned", "subscription_id", sub)
	}
	return k
}

// MaxOwnerMissing is how many changes in a row a subscription may miss
// because its owner cannot be found before it is deactivated.
const MaxOwnerMissing = 50

// ownerMissing counts a change withheld from s when its owner was not found
// (a denial by the rule is not counted: that is the rule working), and
// deactivates s after MaxOwnerMissing in a row. The count lives in memory: a
// restart starts it afresh, which only delays the deactivation.
func (c *consumer) ownerMissing(ctx context.Context, s *subs.Subscription) error {
	if _, found := c.ownersFound[s.Owner]; found {
		return nil
	}
	c.missing[s.ID]++
	if c.missing[s.ID] < MaxOwnerMissing {
		return nil
	}
	delete(c.missing, s.ID)
	msg := fmt.Sprintf("Deactivated: owner %q was not found for %d changes in a row", s.Owner, MaxOwnerMissing)
	if _, err := c.db.Exec(ctx, `UPDATE walhook.subscriptions SET active = false, status_message = $2, updated_at = now()
		WHERE id = $1 AND active`, s.ID, msg); err != nil {
		return fmt.Errorf("deactivate subscription %s: %w", s.ID, err)
	}
	c.log.Warn("subscription deactivated: owner not found", "subscription_id", s.ID)
	return nil
}

// removeOwner removes the subscriptions of an owner whose row was deleted
// from a watched table (owners.remove_on_delete), taking the owner's id from
// the row's id column.
func (c *consumer) removeOwner(ctx context.Context, ch *change.Change) error {
	i := ch.Relation.ColumnIndex("id")
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

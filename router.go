package walhook

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/internal/change"
	"github.com/walhook/walhook/internal/metrics"
	"github.com/walhook/walhook/internal/subs"
	"github.com/walhook/walhook/mapping"
)

// The router turns one committed change into deliveries, in four steps,
// each a small method:
//
//	derive   the change's events: the table's verb for the operation and
//	         every derived event whose `when` holds, with the payload
//	match    per event, the active subscriptions at the row's site, the
//	         transaction's active sites and their ancestors (at every site
//	         for a truncate)
//	judge    per event with matches, which owners may see the row (and the
//	         old row) by the table's acl rule, owners loaded once per change
//	fanOut   per allowed subscription, one request, shared by subscriptions
//	         with the same target, dialect and secret
//
// It needs no HTTP and no slot: deliveries go to a submitter, owners come
// from an ownerSource, and the one write it makes (deactivating a
// subscription whose owner is gone) goes to a subscriptionStore.

// submitter takes deliveries: deliver.Worker.
type submitter interface {
	Submit(ctx context.Context, r *deliver.Request) error
}

// ownerSource gives owners' attributes, as CEL values, keyed by id; ids it
// does not know are absent: acl.Owners.
type ownerSource interface {
	Get(ctx context.Context, ids []string) (map[string]map[string]any, error)
}

// subscriptionStore changes walhook.subscriptions for the router.
type subscriptionStore interface {
	// Deactivate deactivates the subscription with the status message.
	Deactivate(ctx context.Context, id, message string) error
}

// work is the transaction a change belongs to, as the router sees it
// (cdc.Txn): every delivery is one unit of work that must be done before
// the slot may pass the transaction.
type work interface {
	Add(n int)
	Done()
}

// MaxOwnerMissing is how many changes in a row a subscription may miss
// because its owner cannot be found before it is deactivated.
const MaxOwnerMissing = 50

type router struct {
	mapper   *mapping.Mapper
	rules    *acl.Rules
	idx      *subs.Index
	owners   ownerSource
	out      submitter
	store    subscriptionStore
	dialects map[string]*deliver.Dialect
	log      *slog.Logger
	metrics  *metrics.Metrics
	now      func() time.Time

	// missing counts, per subscription, changes in a row withheld because
	// its owner could not be found. It lives in memory: a restart starts it
	// afresh, which only delays the deactivation.
	missing map[string]int

	// holder writes what route holds; nil in a release, whose caller
	// writes pendingHolds in its own transaction.
	holder  holder
	holdLog *holdLog
	// only restricts matches to one subscription (a release of a delivery
	// held for it); "" matches every subscription.
	only string
	// existing, set with only, makes the router send each change as an
	// existing row of backfill existing (the table's Existing event, to
	// only whatever events it takes, if its site matches); existingKey is
	// the current row's key, for its event id.
	existing    int64
	existingKey string
	// shapes caches mismatch's verdict per relation.
	shapes map[*change.Relation]string
	// byRel follows mapped tables by relation id, so that a renamed table
	// keeps its mapping (and says so) instead of going silent.
	byRel   map[uint32]*mapping.Table
	renamed map[uint32]string // the name last warned about, per relation id

	// pks are the mapped tables' primary key columns, and orderCols the
	// columns each relation's row key is read from, for ordering: key.
	pks       map[string][]string
	orderCols map[*change.Relation][]int

	// pendingHolds are the current change's held deliveries.
	pendingHolds []held

	// Scratch space reused for every change.
	events  []mapping.Event
	sites   []string
	matched []*subs.Subscription
	ids     []string
	sent    map[string]bool // coalescing keys already sent for the event
	verdict verdict
}

// verdict is what judge decided for one change.
type verdict struct {
	// allowed is whether each owner may see the row.
	allowed map[string]bool
	// allowedOld is whether each owner may see the old row of an update (the
	// envelope's "previous"); nil when there is no old row to show.
	allowedOld map[string]bool
	// found holds the owners that exist; nil when the rule needs none.
	found map[string]map[string]any
	// failed holds the owners whose rule evaluation failed, with the error.
	failed map[string]error
	// ownersErr is why owners could not be loaded; every match is held.
	ownersErr error
}

func newRouter(mapper *mapping.Mapper, rules *acl.Rules, idx *subs.Index, owners ownerSource, out submitter,
	store subscriptionStore, dialects map[string]*deliver.Dialect, log *slog.Logger, m *metrics.Metrics) *router {
	return &router{
		mapper: mapper, rules: rules, idx: idx, owners: owners, out: out, store: store, dialects: dialects,
		log: log, metrics: m, now: time.Now,
		missing:   map[string]int{},
		sent:      map[string]bool{},
		shapes:    map[*change.Relation]string{},
		orderCols: map[*change.Relation][]int{},
		byRel:     map[uint32]*mapping.Table{},
		renamed:   map[uint32]string{},
		holdLog:   &holdLog{log: log},
		verdict:   verdict{allowed: map[string]bool{}, failed: map[string]error{}},
	}
}

// input converts a change's rows for CEL once, on first need: most changes
// match no subscription and never need it.
type input struct {
	ch    *change.Change
	table string // the mapped table's name, which a rename does not change
	site  string
	in    *acl.Input
}

func (i *input) get() *acl.Input {
	if i.in == nil {
		i.in = acl.InputFor(i.ch, i.site)
		i.in.Table = i.table
	}
	return i.in
}

// route delivers ch, a change of the transaction txn, whose writer set
// txSites with walhook.set_site() before it. What it cannot judge or shape
// it holds; the holds are durable when route returns.
func (r *router) route(ctx context.Context, txn work, ch *change.Change, txSites []string) error {
	t := r.table(ch.Relation)
	if t == nil {
		return nil // not a mapped table: it produces no event
	}
	r.pendingHolds = r.pendingHolds[:0]
	if why := r.mismatch(t, ch.Relation); why != "" {
		// The row's events and site cannot be trusted: hold the change
		// whole, to be routed again once the config fits.
		r.hold(held{cause: metrics.HeldSchema, reason: why, table: t.Name, ch: ch, sites: txSites})
		return r.flushHolds(ctx)
	}
	if err := r.routeEvents(ctx, txn, t, ch, txSites); err != nil {
		return err
	}
	return r.flushHolds(ctx)
}

// table returns rel's mapping: by name, or by relation id for a mapped
// table that was renamed, with a warning the first time a name is seen.
func (r *router) table(rel *change.Relation) *mapping.Table {
	name := rel.QualifiedName()
	if t := r.mapper.Table(name); t != nil {
		r.byRel[rel.ID] = t
		return t
	}
	t := r.byRel[rel.ID]
	if t != nil && r.renamed[rel.ID] != name {
		r.renamed[rel.ID] = name
		r.log.Warn("a mapped table was renamed: walhook follows it by its id, but the config still names the old name; update tables[].table",
			"config_table", t.Name, "table", name)
	}
	return t
}

// routeEvents derives, matches, judges and fans out ch's events.
func (r *router) routeEvents(ctx context.Context, txn work, t *mapping.Table, ch *change.Change, txSites []string) error {
	site := t.Site(ch)
	in := &input{ch: ch, table: t.Name, site: site}
	r.sites = subs.AppendAncestors(r.sites[:0], site)
	for _, s := range txSites {
		r.sites = subs.AppendAncestors(r.sites, s)
	}
	if ch.Op == change.Truncate {
		// The table is emptied at every site: subscriptions at any site
		// match, and the acl rule (with an empty row) decides.
		r.sites = r.idx.AppendSites(r.sites[:0])
	}
	var failedWhen []failedEvent
	var payloadErr error
	r.events, failedWhen, payloadErr = r.derive(r.events[:0], t, ch, in)
	for _, f := range failedWhen {
		// Whether the event exists is unknown: hold it for everyone who
		// would get it if it did.
		r.matched = r.match(r.matched[:0], f.name)
		id := mapping.EventID(ch.Tx.Source, ch.Tx.CommitLSN, ch.Seq, f.name)
		for _, s := range r.matched {
			r.hold(held{cause: metrics.HeldRule, reason: f.err.Error(), table: t.Name, sub: s.ID, owner: s.Owner,
				event: f.name, eventID: id, ch: ch, sites: txSites})
		}
	}
	judged := false
	for i := range r.events {
		ev := &r.events[i]
		r.matched = r.match(r.matched[:0], ev.Name)
		if len(r.matched) == 0 {
			continue
		}
		if payloadErr != nil {
			// The body cannot be built as configured; sending the raw
			// columns instead could show what the payload leaves out.
			for _, s := range r.matched {
				r.hold(held{cause: metrics.HeldPayload, reason: payloadErr.Error(), table: t.Name, sub: s.ID, owner: s.Owner,
					event: ev.Name, eventID: ev.ID, ch: ch, sites: txSites})
			}
			continue
		}
		// One judgement per change serves all its events: the rule reads
		// the row and the owner, not the event.
		if !judged || r.needsMore() {
			if err := r.judge(ctx, t, ch, in); err != nil {
				return err
			}
			judged = true
		}
		if err := r.fanOut(ctx, txn, ev, site, txSites); err != nil {
			return err
		}
	}
	return nil
}

// match appends the active subscriptions to event at the change's sites
// (r.sites), only the one a release is for when r.only is set.
func (r *router) match(dst []*subs.Subscription, event string) []*subs.Subscription {
	if r.existing != 0 {
		// A backfill is asked for one subscription: its events name the
		// tables, not the existing event.
		if s := r.idx.Get(r.only); s != nil && s.Active && slices.Contains(r.sites, s.Site) {
			dst = append(dst, s)
		}
		return dst
	}
	dst = r.idx.Match(dst, event, r.sites)
	if r.only != "" {
		dst = slices.DeleteFunc(dst, func(s *subs.Subscription) bool { return s.ID != r.only })
	}
	return dst
}

// hold records a held delivery of the current change.
func (r *router) hold(h held) {
	r.pendingHolds = append(r.pendingHolds, h)
	r.metrics.Held.WithLabelValues(h.cause).Inc()
	r.holdLog.held(&h)
}

// flushHolds writes the current change's holds, durably, before the change
// may be acknowledged. In a release the caller writes them.
func (r *router) flushHolds(ctx context.Context) error {
	if len(r.pendingHolds) == 0 || r.holder == nil {
		return nil
	}
	err := r.holder.Hold(ctx, r.pendingHolds)
	clear(r.pendingHolds)
	r.pendingHolds = r.pendingHolds[:0]
	return err
}

// failedEvent is a derived event whose condition failed to evaluate.
type failedEvent struct {
	name string
	err  error
}

// needsMore says whether the owners of the current matches were not all
// judged yet (a later event matched other subscriptions than the first).
func (r *router) needsMore() bool {
	for _, s := range r.matched {
		if _, ok := r.verdict.allowed[s.Owner]; !ok {
			return true
		}
	}
	return false
}

// derive appends ch's events to dst: the standard one, then each derived
// event whose condition holds, with the table's payload when it has one. It
// returns the derived events whose condition failed to evaluate and the
// payload's error: both hold deliveries instead of guessing.
func (r *router) derive(dst []mapping.Event, t *mapping.Table, ch *change.Change, in *input) ([]mapping.Event, []failedEvent, error) {
	var failed []failedEvent
	if r.existing != 0 {
		// An existing row: one event, no derived ones (they describe changes).
		dst = append(dst, mapping.Event{ID: mapping.BackfillEventID(r.existing, t.Name, r.existingKey, t.Existing),
			Name: t.Existing, Table: t, Change: ch, Backfill: r.existing})
	} else {
		dst = r.mapper.MapTable(dst, t, ch)
	}
	for _, d := range t.Derived {
		if r.existing != 0 {
			break
		}
		if ch.Op.String() != d.On {
			continue
		}
		ok, err := t.When(d, in.get())
		if err != nil {
			r.metrics.RuleErrors.WithLabelValues(metrics.RuleEvent).Inc()
			failed = append(failed, failedEvent{name: d.Name, err: err})
			continue
		}
		if ok {
			dst = append(dst, mapping.Event{
				ID: mapping.EventID(ch.Tx.Source, ch.Tx.CommitLSN, ch.Seq, d.Name), Name: d.Name, Table: t, Change: ch})
		}
	}
	r.metrics.EventsProduced.Add(float64(len(dst)))
	if len(dst) > 0 && t.HasPayload() && ch.Op != change.Truncate {
		// A truncate has no row to build a payload from: its data is {}.
		if err := r.payload(dst, t, in.get()); err != nil {
			return dst, failed, err
		}
	}
	return dst, failed, nil
}

// payload builds the body's data (and previous) for the events with the
// table's payload expression.
func (r *router) payload(events []mapping.Event, t *mapping.Table, in *acl.Input) error {
	data, err := t.Payload(in)
	if err != nil {
		return err
	}
	var prev []byte
	if in.Op == change.Update && in.Old != nil {
		old := *in
		old.New = in.Old
		if prev, err = t.Payload(&old); err != nil {
			return fmt.Errorf("previous: %w", err)
		}
	}
	for i := range events {
		events[i].Data, events[i].Previous = data, prev
	}
	return nil
}

// judge decides, once per owner of the matched subscriptions, whether the
// owner may see the row and, for updates with an old row, the old row too.
// Owners are loaded in one batch; an owner that cannot be found sees
// nothing. Owners that cannot be loaded because the database went away fail
// the change (it is not acknowledged, and the pipeline restarts); owners that
// cannot be loaded because owners.query does not fit the database hold the
// deliveries (verdict.ownersErr), as do rules that fail for an owner
// (verdict.failed).
func (r *router) judge(ctx context.Context, t *mapping.Table, ch *change.Change, in *input) error {
	v := &r.verdict
	clear(v.failed)
	v.ownersErr = nil
	if r.rules.AlwaysAllows(t.Name) {
		// acl: "true": no owner to load, no row to bind.
		clear(v.allowed)
		for _, s := range r.matched {
			v.allowed[s.Owner] = true
		}
		v.allowedOld, v.found = nil, nil
		return nil
	}
	r.ids = r.ids[:0]
	for _, s := range r.matched {
		r.ids = append(r.ids, s.Owner)
	}
	owners, err := r.owners.Get(ctx, r.ids)
	if err != nil {
		if transient(err) {
			return fmt.Errorf("load owners: %w", err)
		}
		clear(v.allowed)
		v.found, v.allowedOld = nil, nil
		v.ownersErr = fmt.Errorf("load owners: %w", err)
		return nil
	}
	v.found = owners
	if err := r.rules.AllowEach(t.Name, in.get(), owners, v.allowed, v.failed); err != nil {
		return fmt.Errorf("judge %s: %w", t.Name, err)
	}
	if n := len(v.failed); n > 0 {
		r.metrics.RuleErrors.WithLabelValues(metrics.RuleACL).Add(float64(n))
	}
	v.allowedOld = nil
	if i := in.get(); ch.Op == change.Update && i.Old != nil {
		old := *i
		old.New, old.Op = i.Old, change.Update
		v.allowedOld = map[string]bool{}
		// An owner whose rule fails on the old row does not see it: the
		// event itself was judged on the new row above.
		_, _ = r.rules.AllowMany(t.Name, &old, owners, v.allowedOld)
	}
	return nil
}

// fanOut submits ev to every allowed subscription of the current matches.
// Subscriptions that share a target, dialect and secret get one request:
// the receiver asked for the event once per destination, and any of its
// owners may see the row. Bodies are built once per dialect and visibility
// of the old row.
func (r *router) fanOut(ctx context.Context, txn work, ev *mapping.Event, site string, txSites []string) error {
	v := &r.verdict
	var bodies map[string][]byte
	var order *deliver.Order
	clear(r.sent)
	for _, s := range r.matched {
		if err := v.ownersErr; err != nil {
			r.hold(held{cause: metrics.HeldOwners, reason: err.Error(), table: ev.Table.Name, sub: s.ID, owner: s.Owner,
				event: ev.Name, eventID: ev.ID, ch: ev.Change, sites: txSites})
			continue
		}
		if err := v.failed[s.Owner]; err != nil {
			r.hold(held{cause: metrics.HeldRule, reason: err.Error(), table: ev.Table.Name, sub: s.ID, owner: s.Owner,
				event: ev.Name, eventID: ev.ID, ch: ev.Change, sites: txSites})
			continue
		}
		if !v.allowed[s.Owner] {
			r.metrics.ACLDenials.Inc()
			if err := r.ownerMissing(ctx, s); err != nil {
				return err
			}
			continue
		}
		delete(r.missing, s.ID)
		ck := s.TargetURL + "\x00" + s.Dialect + "\x00" + s.Secret
		if r.sent[ck] {
			continue
		}
		r.sent[ck] = true
		d := r.dialects[s.Dialect]
		if d == nil {
			d = r.dialects[mapping.DialectDefault]
		}
		withPrev := v.allowedOld == nil || v.allowedOld[s.Owner]
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
		key := r.key(s.ID, s.Secret)
		var prevKey []byte
		if key != nil && s.PrevSecret != "" && r.now().Before(s.PrevSecretUntil) {
			prevKey = r.key(s.ID, s.PrevSecret)
		}
		req := &deliver.Request{
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
			Committed:      ev.Change.Tx.CommitTime,
			Done:           txn.Done,
			Batch:          d.Batch,
			NoSpill:        ev.Backfill != 0,
		}
		if d.OrderByKey {
			if order == nil {
				o := r.order(ev.Table, ev.Change)
				order = &o
			}
			req.Order = *order
		}
		txn.Add(1)
		if err := r.out.Submit(ctx, req); err != nil {
			// Not submitted: nothing will call Done, and the transaction
			// must not be acknowledged, so the work stays added.
			return err
		}
	}
	return nil
}

// order is ch's place in the sequence of its row key, for dialects with
// ordering: key. The key is the table's key: its key: columns, else its
// primary key, else the columns the replica identity sends as the key.
func (r *router) order(t *mapping.Table, ch *change.Change) deliver.Order {
	rel := ch.Relation
	cols, ok := r.orderCols[rel]
	if !ok {
		names := t.Config.Key
		if len(names) == 0 {
			names = r.pks[t.Name]
		}
		for _, n := range names {
			if i := rel.ColumnIndex(n); i >= 0 {
				cols = append(cols, i)
			}
		}
		if len(cols) != len(names) || len(cols) == 0 {
			cols = cols[:0]
			for i, c := range rel.Columns {
				if c.Key {
					cols = append(cols, i)
				}
			}
		}
		r.orderCols[rel] = cols
	}
	row := ch.New
	if row == nil {
		row = ch.Old
	}
	k, ok := orderKeyOf(t.Name, row, cols)
	if !ok {
		// A key column unchanged and TOASTed in the new row: the old row
		// has it, and an update that changes the key sends it in both.
		if k, ok = orderKeyOf(t.Name, ch.Old, cols); !ok {
			k = t.Name
		}
	}
	return deliver.Order{Key: k, LSN: uint64(ch.Tx.CommitLSN), N: uint64(ch.Seq)}
}

// orderKeyOf is the table's name and a JSON array of the key columns'
// values, as text (walhook.deliveries stores it; text cannot hold the NUL
// keyOf joins with); ok is false when one is unknown.
func orderKeyOf(table string, row change.Row, cols []int) (string, bool) {
	b := append(make([]byte, 0, len(table)+32), table...)
	b = append(b, '[')
	for i, c := range cols {
		if c < 0 || c >= len(row) || row[c].Kind == change.Unchanged {
			return "", false
		}
		if i > 0 {
			b = append(b, ',')
		}
		if row[c].Kind == change.Text {
			b = change.AppendString(b, row[c].Text)
		} else {
			b = append(b, "null"...)
		}
	}
	return string(append(b, ']')), true
}

// key decodes a secret; an unusable one sends unsigned, with a warning.
func (r *router) key(sub, secret string) []byte {
	if secret == "" {
		return nil
	}
	k, err := deliver.SecretKey(secret)
	if err != nil {
		r.log.Warn("subscription secret unusable; sending unsigned", "subscription_id", sub)
	}
	return k
}

// ownerMissing counts a change withheld from s when its owner was not found
// (a denial by the rule is not counted: that is the rule working), and
// deactivates s after MaxOwnerMissing in a row.
func (r *router) ownerMissing(ctx context.Context, s *subs.Subscription) error {
	if r.verdict.found == nil {
		return nil
	}
	if _, found := r.verdict.found[s.Owner]; found {
		return nil
	}
	r.missing[s.ID]++
	if r.missing[s.ID] < MaxOwnerMissing {
		return nil
	}
	delete(r.missing, s.ID)
	msg := fmt.Sprintf("Deactivated: owner %q was not found for %d changes in a row", s.Owner, MaxOwnerMissing)
	if err := r.store.Deactivate(ctx, s.ID, msg); err != nil {
		return fmt.Errorf("deactivate subscription %s: %w", s.ID, err)
	}
	r.log.Warn("subscription deactivated: owner not found", "subscription_id", s.ID)
	return nil
}

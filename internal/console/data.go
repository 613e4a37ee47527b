package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/deliver"
)

// queryTimeout bounds every page's and action's database work.
const queryTimeout = 10 * time.Second

// status is the part of walhook status's JSON report the console shows.
type status struct {
	SchemaVersion int    `json:"schema_version"`
	SlotError     string `json:"slot_error"`
	Slot          *struct {
		Name          string `json:"name"`
		Active        bool   `json:"active"`
		ConfirmedLSN  string `json:"confirmed_flush_lsn"`
		LagBytes      int64  `json:"lag_bytes"`
		RetainedBytes int64  `json:"retained_bytes"`
		WALStatus     string `json:"wal_status"`
	} `json:"slot"`
	Leader *struct {
		PID         int32  `json:"pid"`
		ClientAddr  string `json:"client_addr"`
		Application string `json:"application_name"`
	} `json:"leader"`
	// Processes are every walhook process that reported lately: the leader
	// and the standbys, with their last pipeline error.
	Processes []struct {
		Name        string    `json:"name"`
		Role        string    `json:"role"`
		Streaming   bool      `json:"streaming"`
		Version     string    `json:"version"`
		Restarts    int64     `json:"restarts"`
		LastError   string    `json:"last_error"`
		LastErrorAt time.Time `json:"last_error_at"`
	} `json:"processes"`
	Subscriptions map[string]int64 `json:"subscriptions"`
	Deliveries    struct {
		Queued    int64      `json:"queued"`
		Due       int64      `json:"due"`
		Leased    int64      `json:"leased"`
		Later     int64      `json:"later"`
		Parked    int64      `json:"parked"`
		NextDueAt *time.Time `json:"next_due_at"`
	} `json:"deliveries"`
}

// subscription is one row of the subscription lists.
type subscription struct {
	ID, Owner, TargetURL, Site, Dialect, StatusMessage, State string
	Events                                                    []string
	Active                                                    bool
	Static                                                    string
	CreatedAt                                                 time.Time
	Failures                                                  int
	Queued                                                    int64
	LastStatus                                                string
	LastAt                                                    *time.Time
}

// attempt is one row of walhook.attempts, for showing.
type attempt struct {
	ID             int64
	SubscriptionID string
	EventID, Event string
	Attempt        int
	Status         string
	ResponseStatus *int32
	Excerpt, Error string
	TargetURL      string
	Headers        []byte
	Body           []byte
	CreatedAt      time.Time
	DurationMS     *int32
}

type filter struct {
	Owner, Event, State, Kind string
}

const subscriptionColumns = `s.id::text, s.owner, s.events, s.target_url, s.site, s.dialect, s.active,
	coalesce(s.status_message, ''), coalesce(s.static_name, ''), s.created_at,
	coalesce(f.consecutive_failures, 0),
	(SELECT count(*) FROM walhook.deliveries d WHERE d.subscription_id = s.id),
	coalesce(la.status, ''), la.created_at,
	CASE WHEN s.active THEN 'active' WHEN s.status_message = $1 THEN 'gone'
	     WHEN s.status_message = $2 THEN 'suspended' ELSE 'inactive' END`

const subscriptionFrom = ` FROM walhook.subscriptions s
	LEFT JOIN walhook.subscription_failures f ON f.subscription_id = s.id
	LEFT JOIN LATERAL (SELECT a.status, a.created_at FROM walhook.attempts a
		WHERE a.subscription_id = s.id ORDER BY a.id DESC LIMIT 1) la ON true`

func scanSubscriptions(rows pgx.Rows) ([]subscription, error) {
	out := []subscription{}
	var s subscription
	_, err := pgx.ForEachRow(rows, []any{&s.ID, &s.Owner, &s.Events, &s.TargetURL, &s.Site, &s.Dialect, &s.Active,
		&s.StatusMessage, &s.Static, &s.CreatedAt, &s.Failures, &s.Queued, &s.LastStatus, &s.LastAt, &s.State}, func() error {
		out = append(out, s)
		s = subscription{}
		return nil
	})
	return out, err
}

// listSubscriptions lists up to 200 subscriptions that pass f; owner, when
// not empty, limits them to that owner whatever f says.
func listSubscriptions(ctx context.Context, q pgx.Tx, f filter) ([]subscription, error) {
	rows, err := q.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`
		WHERE ($3 = '' OR s.owner = $3)
		  AND ($4 = '' OR EXISTS (SELECT 1 FROM unnest(s.events) e
		        WHERE e = $4 OR $4 LIKE replace(replace(replace(e, '%', '\%'), '_', '\_'), '*', '%')))
		  AND ($5 = '' OR $5 = CASE WHEN s.active THEN 'active' WHEN s.status_message = $1 THEN 'gone'
		        WHEN s.status_message = $2 THEN 'suspended' ELSE 'inactive' END)
		  AND ($6 = '' OR ($6 = 'static') = (s.static_name IS NOT NULL))
		ORDER BY s.created_at DESC, s.id LIMIT 200`,
		deliver.GoneMessage, deliver.SuspendedMessage, f.Owner, f.Event, f.State, f.Kind)
	if err != nil {
		return nil, err
	}
	return scanSubscriptions(rows)
}

func getSubscription(ctx context.Context, q pgx.Tx, id, owner string) (*subscription, error) {
	rows, err := q.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`
		WHERE s.id = $3::uuid AND ($4 = '' OR s.owner = $4)`, deliver.GoneMessage, deliver.SuspendedMessage, id, owner)
	if err != nil {
		return nil, err
	}
	subs, err := scanSubscriptions(rows)
	if err != nil || len(subs) == 0 {
		return nil, err
	}
	return &subs[0], nil
}

// listAttempts lists the newest attempts of one subscription (id not
// empty) or of every subscription of owner.
func listAttempts(ctx context.Context, q pgx.Tx, id, owner string, limit int) ([]attempt, error) {
	rows, err := q.Query(ctx, `SELECT a.id, a.subscription_id::text, a.event_id, a.event, a.attempt, a.status, a.response_status,
			coalesce(a.response_excerpt, ''), coalesce(a.error, ''), a.target_url,
			convert_to(coalesce(a.request_headers::text, ''), 'UTF8'), coalesce(a.request_body, ''::bytea), a.created_at, a.duration_ms
		FROM walhook.attempts a JOIN walhook.subscriptions s ON s.id = a.subscription_id
		WHERE ($1 = '' OR a.subscription_id = $1::uuid) AND ($2 = '' OR s.owner = $2)
		ORDER BY a.id DESC LIMIT $3`, id, owner, limit)
	if err != nil {
		return nil, err
	}
	out := []attempt{}
	var a attempt
	_, err = pgx.ForEachRow(rows, []any{&a.ID, &a.SubscriptionID, &a.EventID, &a.Event, &a.Attempt, &a.Status, &a.ResponseStatus,
		&a.Excerpt, &a.Error, &a.TargetURL, &a.Headers, &a.Body, &a.CreatedAt, &a.DurationMS}, func() error {
		out = append(out, a)
		a = attempt{}
		return nil
	})
	return out, err
}

// read runs fn in a read-only transaction.
func (c *Console) read(ctx context.Context, fn func(pgx.Tx) error) error {
	p, err := c.db()
	if err != nil {
		return err
	}
	return pgx.BeginTxFunc(ctx, p, pgx.TxOptions{AccessMode: pgx.ReadOnly}, fn)
}

// overview is the console's front page.
func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	f := filter{Owner: r.FormValue("owner"), Event: r.FormValue("event"), State: r.FormValue("state"), Kind: r.FormValue("kind")}
	data := map[string]any{"Health": c.cfg.Health(), "Filter": f}
	var st status
	held := map[string]int64{}
	var streaks []subscription
	var subs []subscription
	var statusErr string
	p, err := c.db()
	if err == nil && c.cfg.Status != nil {
		err = func() error {
			conn, err := p.Acquire(ctx)
			if err != nil {
				return err
			}
			defer conn.Release()
			rep, err := c.cfg.Status(ctx, conn.Conn())
			if err != nil {
				statusErr = err.Error()
				return nil
			}
			b, err := json.Marshal(rep)
			if err != nil {
				return err
			}
			return json.Unmarshal(b, &st)
		}()
	}
	if err == nil {
		err = c.read(ctx, func(tx pgx.Tx) error {
			var err error
			if subs, err = listSubscriptions(ctx, tx, f); err != nil {
				return err
			}
			rows, err := tx.Query(ctx, `SELECT `+subscriptionColumns+subscriptionFrom+`
				WHERE f.consecutive_failures > 0 ORDER BY f.consecutive_failures DESC LIMIT 20`,
				deliver.GoneMessage, deliver.SuspendedMessage)
			if err != nil {
				return err
			}
			if streaks, err = scanSubscriptions(rows); err != nil {
				return err
			}
			var cause string
			var n int64
			rows, err = tx.Query(ctx, `SELECT cause, count(*) FROM walhook.held WHERE status = 'held' GROUP BY cause ORDER BY cause`)
			if err != nil {
				return err
			}
			_, err = pgx.ForEachRow(rows, []any{&cause, &n}, func() error { held[cause] = n; return nil })
			return err
		})
	}
	if err != nil {
		c.dbFail(w, r, err)
		return
	}
	var heldTotal int64
	for _, n := range held {
		heldTotal += n
	}
	data["Status"], data["StatusError"], data["Held"], data["HeldTotal"] = st, statusErr, held, heldTotal
	data["Subscriptions"], data["Streaks"] = subs, streaks
	data["States"] = []string{"active", "inactive", "suspended", "gone"}
	c.renderView(w, r, http.StatusOK, "overview", view{Title: "walhook console", Base: "/console", Data: data})
}

func (c *Console) subscription(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !validUUID(id) {
		c.fail(w, r, http.StatusNotFound, "No such subscription.")
		return
	}
	s, attempts, ok := c.loadSubscription(w, r, id, "", nil)
	if !ok {
		return
	}
	c.renderView(w, r, http.StatusOK, "subscription", view{Title: "Subscription " + s.ID, Base: "/console",
		Data: map[string]any{"Sub": s, "Attempts": attempts}})
}

// loadSubscription reads subscription id (of owner, when not empty, acting
// for that owner) and its newest attempts, and more when more is not nil;
// it answers the request itself when that fails or there is no such
// subscription.
func (c *Console) loadSubscription(w http.ResponseWriter, r *http.Request, id, owner string,
	more func(context.Context, pgx.Tx) error) (*subscription, []attempt, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	var s *subscription
	var attempts []attempt
	err := c.read(ctx, func(tx pgx.Tx) error {
		if owner != "" {
			if err := scopeTo(ctx, tx, owner); err != nil {
				return err
			}
		}
		var err error
		if s, err = getSubscription(ctx, tx, id, owner); err != nil || s == nil {
			return err
		}
		if attempts, err = listAttempts(ctx, tx, id, owner, 50); err != nil || more == nil {
			return err
		}
		return more(ctx, tx)
	})
	if err != nil {
		c.dbFail(w, r, err)
		return nil, nil, false
	}
	if s == nil {
		c.fail(w, r, http.StatusNotFound, "No such subscription.")
		return nil, nil, false
	}
	return s, attempts, true
}

type heldRow struct {
	ID                                               int64
	CreatedAt                                        time.Time
	Cause, Reason, Table, Subscription, Owner, Event string
	CommitLSN                                        string
}

func (c *Console) held(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	var out []heldRow
	err := c.read(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, created_at, cause, reason, table_name, coalesce(subscription_id::text, ''),
				coalesce(owner, ''), coalesce(event, ''), commit_lsn::text
			FROM walhook.held WHERE status = 'held' ORDER BY id DESC LIMIT 200`)
		if err != nil {
			return err
		}
		var h heldRow
		_, err = pgx.ForEachRow(rows, []any{&h.ID, &h.CreatedAt, &h.Cause, &h.Reason, &h.Table, &h.Subscription, &h.Owner, &h.Event, &h.CommitLSN}, func() error {
			out = append(out, h)
			return nil
		})
		return err
	})
	if err != nil {
		c.dbFail(w, r, err)
		return
	}
	c.renderView(w, r, http.StatusOK, "held", view{Title: "Held deliveries", Base: "/console", Data: map[string]any{"Held": out}})
}

// subscriptionAction runs one SQL API function on a subscription.
func (c *Console) subscriptionAction(w http.ResponseWriter, r *http.Request) {
	id, action := r.PathValue("id"), r.PathValue("action")
	sql, ok := map[string]string{
		"ping":       `SELECT walhook.ping($1)::text`,
		"activate":   `SELECT walhook.activate($1)::text`,
		"deactivate": `SELECT walhook.deactivate($1, 'Deactivated in the walhook console')::text`,
		"rotate":     `SELECT 'rotated' FROM walhook.rotate_secret($1)`, // the secret never leaves the database
	}[action]
	if !ok || !validUUID(id) {
		c.fail(w, r, http.StatusNotFound, "No such action.")
		return
	}
	if err := c.exec(r.Context(), "", sql, id); err != nil {
		c.actionFail(w, r, err)
		return
	}
	http.Redirect(w, r, "/console/subscriptions/"+id+"?ok="+action, http.StatusSeeOther)
}

func (c *Console) redeliver(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		c.fail(w, r, http.StatusNotFound, "No such attempt.")
		return
	}
	var sub string
	if err := c.execScan(r.Context(), "", &sub, `SELECT subscription_id::text FROM walhook.attempts WHERE id = $1
		AND walhook.redeliver($1) IS NOT NULL`, id); err != nil {
		c.actionFail(w, r, err)
		return
	}
	http.Redirect(w, r, "/console/subscriptions/"+sub+"?ok=redeliver", http.StatusSeeOther)
}

// releaseHeld asks walhook to judge every held delivery again
// (walhook.release_held).
func (c *Console) releaseHeld(w http.ResponseWriter, r *http.Request) {
	if err := c.exec(r.Context(), "", `SELECT walhook.release_held()::text`); err != nil {
		c.actionFail(w, r, err)
		return
	}
	http.Redirect(w, r, "/console/held?ok=release", http.StatusSeeOther)
}

// exec runs one SQL API call in a transaction; a non-empty owner is set as
// walhook.owner for it, so the API acts for that owner only.
func (c *Console) exec(ctx context.Context, owner, sql string, args ...any) error {
	var ignored string
	return c.execScan(ctx, owner, &ignored, sql, args...)
}

func (c *Console) execScan(ctx context.Context, owner string, dst any, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	p, err := c.db()
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, p, func(tx pgx.Tx) error {
		if owner != "" {
			if err := scopeTo(ctx, tx, owner); err != nil {
				return err
			}
		}
		return tx.QueryRow(ctx, sql, args...).Scan(dst)
	})
}

// scopeTo makes the rest of tx act for owner, as the application's session
// for that owner would: walhook.owner names the owner, so the SQL API's
// owner checks (and its triggers) refuse anything of another owner.
func scopeTo(ctx context.Context, tx pgx.Tx, owner string) error {
	_, err := tx.Exec(ctx, `SELECT set_config('walhook.owner', $1, true)`, owner)
	return err
}

// actionFail shows the SQL API's refusal (22023 bad input, 42501 not
// allowed) in its words; anything else as a server error.
func (c *Console) actionFail(w http.ResponseWriter, r *http.Request, err error) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "22023", "22P02":
			c.fail(w, r, http.StatusBadRequest, pgErr.Message)
			return
		case "42501":
			c.fail(w, r, http.StatusForbidden, pgErr.Message)
			return
		}
	}
	if errors.Is(err, pgx.ErrNoRows) {
		c.fail(w, r, http.StatusNotFound, "Not found.")
		return
	}
	c.dbFail(w, r, err)
}

func (c *Console) dbFail(w http.ResponseWriter, r *http.Request, err error) {
	c.log.Warn("console query", "path", r.URL.Path, "err", err)
	c.fail(w, r, http.StatusServiceUnavailable, "The database did not answer; try again shortly.")
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, ch := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if ch != '-' {
				return false
			}
		case ch >= '0' && ch <= '9', ch >= 'a' && ch <= 'f', ch >= 'A' && ch <= 'F':
		default:
			return false
		}
	}
	return true
}

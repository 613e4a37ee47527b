package walhook

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/deliver"
	"github.com/walhook/walhook/schema"
)

// RecentFailures is how many failed attempts Status lists.
const RecentFailures = 10

// Problems Status reports in StatusReport.Problems, most serious first.
// walhook status exits non-zero for each (README, "Status").
const (
	ProblemNotInstalled = "not_installed" // schema walhook is missing
	ProblemSlotMissing  = "slot_missing"  // the replication slot does not exist
	ProblemSlotLost     = "slot_lost"     // the slot's wal_status is lost: changes were missed
	ProblemNoLeader     = "no_leader"     // no walhook run holds the leader lock
)

// StatusReport is what walhook status prints; its JSON form is a contract
// for scripts, so fields are only ever added.
type StatusReport struct {
	// Problems lists what stops webhooks from flowing (Problem...
	// constants), most serious first; empty when all is well.
	Problems      []string    `json:"problems"`
	Installed     bool        `json:"installed"`
	SchemaVersion int         `json:"schema_version"`
	Slot          *SlotStatus `json:"slot"` // null when the slot is missing
	SlotError     string      `json:"slot_error,omitempty"`
	// Leader is the session holding the slot's leader lock; null when no
	// walhook leads.
	Leader *LeaderStatus `json:"leader"`
	// Subscriptions counts subscriptions by state: active, inactive
	// (deactivated by the application), suspended (too many failures in a
	// row) and gone (the receiver answered 410).
	Subscriptions map[string]int64 `json:"subscriptions"`
	// Static lists the subscriptions declared in the config, by name.
	Static []StaticStatus `json:"static"`
	// Held counts the deliveries held by cause (rule, payload, owners,
	// schema): nothing is sent for them until walhook.release_held().
	Held map[string]int64 `json:"held"`
	// Processes are the walhook processes that reported in the last
	// minute, with their role and last pipeline error.
	Processes []ProcessStatus `json:"processes"`
	// Backfills are the tables of backfills not finished, or finished in
	// the last hour, newest first.
	Backfills      []BackfillStatus `json:"backfills"`
	Deliveries     DeliveryStatus   `json:"deliveries"`
	RecentFailures []FailureStatus  `json:"recent_failures"`
}

// BackfillStatus is one table of one backfill (walhook.backfills).
type BackfillStatus struct {
	ID             int64      `json:"id"`
	Table          string     `json:"table"`
	SubscriptionID string     `json:"subscription_id"`
	Status         string     `json:"status"`
	RowsSent       int64      `json:"rows_sent"`
	Estimate       *int64     `json:"estimate"`
	StartedAt      *time.Time `json:"started_at"`
	FinishedAt     *time.Time `json:"finished_at"`
	Error          string     `json:"error,omitempty"`
}

// ProcessStatus is one walhook process.
type ProcessStatus struct {
	Name        string     `json:"name"`
	Slot        string     `json:"slot"`
	Role        string     `json:"role"`
	Streaming   bool       `json:"streaming"`
	Version     string     `json:"version"`
	StartedAt   time.Time  `json:"started_at"`
	SeenAt      time.Time  `json:"seen_at"`
	Restarts    int64      `json:"restarts"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

// StaticStatus is one subscription declared under subscriptions: in the
// config.
type StaticStatus struct {
	Name          string   `json:"name"`
	ID            string   `json:"id"`
	Events        []string `json:"events"`
	TargetURL     string   `json:"target_url"`
	Owner         string   `json:"owner"`
	Active        bool     `json:"active"`
	StatusMessage string   `json:"status_message,omitempty"`
}

type SlotStatus struct {
	Name      string `json:"name"`
	Active    bool   `json:"active"`
	ActivePID int32  `json:"active_pid,omitempty"`
	// ConfirmedLSN is where a restart resumes; LagBytes is the WAL written
	// since then.
	ConfirmedLSN string `json:"confirmed_flush_lsn"`
	RestartLSN   string `json:"restart_lsn"`
	LagBytes     int64  `json:"lag_bytes"`
	// RetainedBytes is the WAL the slot keeps from being recycled.
	RetainedBytes int64 `json:"retained_bytes"`
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved or lost (the slot is useless: reinstall).
	WALStatus string `json:"wal_status,omitempty"`
	// SafeWALBytes is how much more WAL may be written before the slot is
	// at risk under max_slot_wal_keep_size; null when that is unlimited.
	SafeWALBytes *int64 `json:"safe_wal_bytes"`
}

type LeaderStatus struct {
	PID          int32      `json:"pid"`
	User         string     `json:"user,omitempty"`
	ClientAddr   string     `json:"client_addr,omitempty"`
	Application  string     `json:"application_name,omitempty"`
	BackendStart *time.Time `json:"backend_start,omitempty"`
}

// DeliveryStatus counts walhook.deliveries, the durable queue: Queued is the
// sum of the other counts.
type DeliveryStatus struct {
	Queued int64 `json:"queued"`
	Due    int64 `json:"due"`    // may be attempted now
	Leased int64 `json:"leased"` // claimed by a process, being attempted
	Later  int64 `json:"later"`  // waiting for their retry time
	Parked int64 `json:"parked"` // their subscription is inactive; activate() resumes them
	// NextDueAt is when the next of the later ones comes due.
	NextDueAt *time.Time `json:"next_due_at,omitempty"`
}

type FailureStatus struct {
	AttemptID      int64     `json:"attempt_id"`
	At             time.Time `json:"at"`
	SubscriptionID string    `json:"subscription_id"`
	EventID        string    `json:"event_id"`
	Event          string    `json:"event"`
	Attempt        int32     `json:"attempt"`
	ResponseStatus *int32    `json:"response_status"`
	Error          string    `json:"error,omitempty"`
}

// Status reads what `walhook status` reports; a missing slot is reported
// in the report, not as an error.
func Status(ctx context.Context, conn *pgx.Conn, slot string) (*StatusReport, error) {
	st := &StatusReport{Subscriptions: map[string]int64{}, Static: []StaticStatus{}, Held: map[string]int64{},
		Processes: []ProcessStatus{}, RecentFailures: []FailureStatus{}, Problems: []string{}}
	v, err := schema.Version(ctx, conn)
	if err != nil {
		return nil, err
	}
	st.SchemaVersion, st.Installed = v, v > 0
	if !st.Installed {
		st.Problems = append(st.Problems, ProblemNotInstalled)
		return st, nil
	}

	si, err := cdc.Slot(ctx, conn, slot)
	var lost *cdc.SlotLostError
	switch {
	case errors.As(err, &lost):
		// Shown with what was lost and how to recover; the slot's figures
		// no longer mean anything.
		st.SlotError = err.Error()
		st.Problems = append(st.Problems, ProblemSlotLost)
		st.Slot = &SlotStatus{Name: slot, WALStatus: "lost", ConfirmedLSN: lost.ConfirmedLSN.String()}
	case errors.Is(err, cdc.ErrSlotMissing):
		st.SlotError = err.Error()
		st.Problems = append(st.Problems, ProblemSlotMissing)
	case err != nil:
		return nil, err
	default:
		s := &SlotStatus{Name: si.Name, Active: si.Active, ActivePID: si.ActivePID,
			ConfirmedLSN: si.ConfirmedFlush.String(), RestartLSN: si.RestartLSN.String(), RetainedBytes: si.RetainedBytes}
		var walStatus *string
		if err := conn.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
				wal_status, safe_wal_size
			FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s.LagBytes, &walStatus, &s.SafeWALBytes); err != nil {
			return nil, fmt.Errorf("read lag of slot %q: %w", slot, err)
		}
		if walStatus != nil {
			s.WALStatus = *walStatus
		}
		if s.WALStatus == "lost" {
			st.Problems = append(st.Problems, ProblemSlotLost)
		}
		st.Slot = s
	}

	// pg_advisory_lock(bigint) files the key as classid (high 32 bits),
	// objid (low 32 bits) and objsubid 1.
	key := uint64(leaderLockKey(slot))
	var l LeaderStatus
	var user, addr, app *string
	err = conn.QueryRow(ctx, `SELECT l.pid, a.usename::text, host(a.client_addr), a.application_name, a.backend_start
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.classid::bigint = $1 AND l.objid::bigint = $2
		LIMIT 1`, int64(key>>32), int64(key&0xffffffff)).Scan(&l.PID, &user, &addr, &app, &l.BackendStart)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		st.Problems = append(st.Problems, ProblemNoLeader)
	case err != nil:
		return nil, fmt.Errorf("find the leader: %w", err)
	default:
		l.User, l.ClientAddr, l.Application = deref(user), deref(addr), deref(app)
		st.Leader = &l
	}

	for _, s := range []string{"active", "inactive", "suspended", "gone"} {
		st.Subscriptions[s] = 0
	}
	rows, err := conn.Query(ctx, `SELECT CASE WHEN active THEN 'active'
			WHEN status_message = $1 THEN 'gone' WHEN status_message = $2 THEN 'suspended' ELSE 'inactive' END, count(*)
		FROM walhook.subscriptions GROUP BY 1`, deliver.GoneMessage, deliver.SuspendedMessage)
	if err != nil {
		return nil, fmt.Errorf("count subscriptions: %w", err)
	}
	var state string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error {
		st.Subscriptions[state] = n
		return nil
	}); err != nil {
		return nil, fmt.Errorf("count subscriptions: %w", err)
	}

	if st.Static, err = collectStatic(ctx, conn); err != nil {
		return nil, err
	}
	if err := collectHeld(ctx, conn, st); err != nil {
		return nil, err
	}
	if st.Backfills, err = collectBackfills(ctx, conn); err != nil {
		return nil, err
	}

	d := &st.Deliveries
	if err := conn.QueryRow(ctx, `SELECT count(*),
			count(*) FILTER (WHERE next_attempt_at <= now()),
			count(*) FILTER (WHERE next_attempt_at > now() AND next_attempt_at < 'infinity' AND locked_by IS NOT NULL),
			count(*) FILTER (WHERE next_attempt_at > now() AND next_attempt_at < 'infinity' AND locked_by IS NULL),
			count(*) FILTER (WHERE next_attempt_at = 'infinity'),
			min(next_attempt_at) FILTER (WHERE next_attempt_at > now() AND next_attempt_at < 'infinity' AND locked_by IS NULL)
		FROM walhook.deliveries`).Scan(&d.Queued, &d.Due, &d.Leased, &d.Later, &d.Parked, &d.NextDueAt); err != nil {
		return nil, fmt.Errorf("count queued deliveries: %w", err)
	}

	rows, err = conn.Query(ctx, `SELECT id, created_at, subscription_id::text, event_id, event, attempt, response_status, coalesce(error, '')
		FROM walhook.attempts WHERE status = 'failed' ORDER BY id DESC LIMIT $1`, RecentFailures)
	if err != nil {
		return nil, fmt.Errorf("read recent failures: %w", err)
	}
	var f FailureStatus
	if _, err := pgx.ForEachRow(rows, []any{&f.AttemptID, &f.At, &f.SubscriptionID, &f.EventID, &f.Event, &f.Attempt, &f.ResponseStatus, &f.Error}, func() error {
		st.RecentFailures = append(st.RecentFailures, f)
		f = FailureStatus{}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read recent failures: %w", err)
	}
	return st, nil
}

// collectStatic lists the static subscriptions; none before schema version
// 10, which added them.
func collectStatic(ctx context.Context, conn *pgx.Conn) ([]StaticStatus, error) {
	out := []StaticStatus{}
	var has bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_attribute
		WHERE attrelid = 'walhook.subscriptions'::regclass AND attname = 'static_name' AND NOT attisdropped)`).Scan(&has); err != nil {
		return nil, fmt.Errorf("look for static subscriptions: %w", err)
	}
	if !has {
		return out, nil
	}
	rows, err := conn.Query(ctx, `SELECT static_name, id::text, events, target_url, owner, active, coalesce(status_message, '')
		FROM walhook.subscriptions WHERE static_name IS NOT NULL ORDER BY static_name`)
	if err != nil {
		return nil, fmt.Errorf("list static subscriptions: %w", err)
	}
	var s StaticStatus
	if _, err := pgx.ForEachRow(rows, []any{&s.Name, &s.ID, &s.Events, &s.TargetURL, &s.Owner, &s.Active, &s.StatusMessage}, func() error {
		out = append(out, s)
		s = StaticStatus{}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list static subscriptions: %w", err)
	}
	return out, nil
}

// collectHeld counts held deliveries and lists the processes, where the
// installed schema has them.
func collectHeld(ctx context.Context, conn *pgx.Conn, st *StatusReport) error {
	var held, procs bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('walhook.held') IS NOT NULL, to_regclass('walhook.processes') IS NOT NULL`).Scan(&held, &procs); err != nil {
		return fmt.Errorf("look for walhook.held: %w", err)
	}
	for _, c := range []string{"rule", "payload", "owners", "schema"} {
		st.Held[c] = 0
	}
	if held {
		rows, err := conn.Query(ctx, `SELECT cause, count(*) FROM walhook.held WHERE status = 'held' GROUP BY 1`)
		if err != nil {
			return fmt.Errorf("count held deliveries: %w", err)
		}
		var cause string
		var n int64
		if _, err := pgx.ForEachRow(rows, []any{&cause, &n}, func() error {
			st.Held[cause] = n
			return nil
		}); err != nil {
			return fmt.Errorf("count held deliveries: %w", err)
		}
	}
	if !procs {
		return nil
	}
	rows, err := conn.Query(ctx, `SELECT name, slot, role, streaming, version, started_at, seen_at, restarts, coalesce(last_error, ''), last_error_at
		FROM walhook.processes WHERE seen_at > now() - $1 * interval '1 millisecond' ORDER BY role = 'leader' DESC, name`, staleAfter.Milliseconds())
	if err != nil {
		return fmt.Errorf("list walhook processes: %w", err)
	}
	var p ProcessStatus
	if _, err := pgx.ForEachRow(rows, []any{&p.Name, &p.Slot, &p.Role, &p.Streaming, &p.Version, &p.StartedAt, &p.SeenAt, &p.Restarts, &p.LastError, &p.LastErrorAt}, func() error {
		st.Processes = append(st.Processes, p)
		p = ProcessStatus{}
		return nil
	}); err != nil {
		return fmt.Errorf("list walhook processes: %w", err)
	}
	return nil
}

// collectBackfills lists the backfills under way or recently finished; none
// before schema version 18, which added them.
func collectBackfills(ctx context.Context, conn *pgx.Conn) ([]BackfillStatus, error) {
	out := []BackfillStatus{}
	var has bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('walhook.backfills') IS NOT NULL`).Scan(&has); err != nil {
		return nil, fmt.Errorf("look for walhook.backfills: %w", err)
	}
	if !has {
		return out, nil
	}
	rows, err := conn.Query(ctx, `SELECT id, table_name, subscription_id::text, status, rows_sent, estimate, started_at, finished_at,
			coalesce(error, '')
		FROM walhook.backfills WHERE finished_at IS NULL OR finished_at > now() - interval '1 hour'
		ORDER BY id DESC, table_name LIMIT 50`)
	if err != nil {
		return nil, fmt.Errorf("list backfills: %w", err)
	}
	var b BackfillStatus
	if _, err := pgx.ForEachRow(rows, []any{&b.ID, &b.Table, &b.SubscriptionID, &b.Status, &b.RowsSent, &b.Estimate, &b.StartedAt, &b.FinishedAt, &b.Error}, func() error {
		out = append(out, b)
		b = BackfillStatus{}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list backfills: %w", err)
	}
	return out, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

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
	Subscriptions  map[string]int64 `json:"subscriptions"`
	Deliveries     DeliveryStatus   `json:"deliveries"`
	RecentFailures []FailureStatus  `json:"recent_failures"`
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
	st := &StatusReport{Subscriptions: map[string]int64{}, RecentFailures: []FailureStatus{}, Problems: []string{}}
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
	switch {
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

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

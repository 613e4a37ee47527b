package schema

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/mapping"
)

// reconcileLockKey serialises reconciles of static subscriptions, so that
// several processes starting at once do not race to create the same one:
// "whstatic" as bytes.
const reconcileLockKey int64 = 0x7768737461746963

// Beginner is what Install and Reconcile need of a connection:
// *pgx.Conn, *pgxpool.Pool and pgx.Tx all have it. In a pgx.Tx their
// transaction is a savepoint, so a caller can roll a whole install back.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Reconcile brings the static subscriptions in walhook.subscriptions in line
// with statics (the config's `subscriptions:`), in one transaction: it
// creates those that are new, updates those that changed, and deactivates
// those no longer declared. It returns what it changed, one readable line
// each. A declaration the SQL API would refuse (an event nothing produces, a
// malformed URL) fails the whole reconcile with the entry's file:line.
//
// Changes reach a running walhook through the stream like any other change
// to walhook.subscriptions, so Reconcile may run while walhook runs.
func Reconcile(ctx context.Context, db Beginner, statics []*mapping.StaticSubscription) ([]string, error) {
	var changes []string
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, reconcileLockKey); err != nil {
			return fmt.Errorf("take reconcile lock: %w", err)
		}
		names := make([]string, 0, len(statics))
		for _, s := range statics {
			names = append(names, s.Name)
			var did string
			err := tx.QueryRow(ctx, `SELECT walhook._declare_static($1, $2::text[], $3, $4, $5, $6, $7)`,
				s.Name, s.Events, s.Target, s.Owner, s.Site, s.Dialect, s.Secret).Scan(&did)
			if err != nil {
				return fmt.Errorf("%s: subscriptions: %s: %w", s.Pos, s.Name, err)
			}
			if did != "" {
				changes = append(changes, fmt.Sprintf("%s static subscription %s", did, s.Name))
			}
		}
		rows, err := tx.Query(ctx, `UPDATE walhook.subscriptions
			SET active = false, status_message = walhook._static_removed(), updated_at = now()
			WHERE static_name IS NOT NULL AND static_name <> ALL($1::text[])
			  AND (active OR status_message IS DISTINCT FROM walhook._static_removed())
			RETURNING static_name`, names)
		if err != nil {
			return fmt.Errorf("deactivate static subscriptions no longer declared: %w", err)
		}
		gone, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("deactivate static subscriptions no longer declared: %w", err)
		}
		for _, name := range gone {
			changes = append(changes, fmt.Sprintf("deactivated static subscription %s: no longer in the config", name))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return changes, nil
}

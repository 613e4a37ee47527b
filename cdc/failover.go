package cdc

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// FailoverReport says, one line per finding, what stands between the slot
// and surviving a promotion of a standby, as far as the server conn is
// connected to can tell; nil when nothing does. The standby's own settings
// (sync_replication_slots = on, hot_standby_feedback = on, a dbname in
// primary_conninfo, primary_slot_name) can only be read there; the primary
// sees some of them through its physical slots, and the lines say which
// standby setting to check. For `walhook check --database-url`.
func FailoverReport(ctx context.Context, conn *pgx.Conn, slot string) ([]string, error) {
	var version int
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, pg_is_in_recovery()").
		Scan(&version, &inRecovery); err != nil {
		return nil, fmt.Errorf("failover report: %w", err)
	}
	if version < failoverVersion {
		return []string{fmt.Sprintf("PostgreSQL %d has no failover slots (17+): after a promotion of a standby the slot is gone, "+
			"and walhook stops until `walhook install --recreate-slot` and a backfill", version/10000)}, nil
	}
	if inRecovery {
		return []string{"this server is a standby: check the primary"}, nil
	}
	var lines []string
	si, err := Slot(ctx, conn, slot)
	switch {
	case err != nil:
		lines = append(lines, err.Error())
	case !si.Failover:
		lines = append(lines, fmt.Sprintf("slot %s has no failover: run walhook install while walhook is stopped", slot))
	}

	var standbySlots string
	if err := conn.QueryRow(ctx, "SELECT current_setting('synchronized_standby_slots')").Scan(&standbySlots); err != nil {
		return nil, fmt.Errorf("failover report: %w", err)
	}
	// The physical slots of standbys: streaming or not, and whether
	// hot_standby_feedback reaches the primary (an xmin on the slot).
	rows, err := conn.Query(ctx, `SELECT slot_name, active, xmin IS NOT NULL OR catalog_xmin IS NOT NULL
		FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name`)
	if err != nil {
		return nil, fmt.Errorf("failover report: %w", err)
	}
	type physical struct {
		name             string
		active, feedback bool
	}
	phys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (physical, error) {
		var p physical
		return p, r.Scan(&p.name, &p.active, &p.feedback)
	})
	if err != nil {
		return nil, fmt.Errorf("failover report: %w", err)
	}
	byName := map[string]physical{}
	for _, p := range phys {
		byName[p.name] = p
	}

	if strings.TrimSpace(standbySlots) == "" {
		lines = append(lines, "synchronized_standby_slots is empty: walhook may receive, and acknowledge, changes that no standby has yet, "+
			"which a promotion then loses; list the standbys' physical slots there")
	}
	for _, name := range strings.Split(standbySlots, ",") {
		name = strings.TrimSpace(name)
		if name == "" || name == "*" {
			continue
		}
		p, ok := byName[name]
		switch {
		case !ok:
			lines = append(lines, fmt.Sprintf("synchronized_standby_slots names %s, which is no physical slot here: walhook's stream waits for it", name))
		case !p.active:
			lines = append(lines, fmt.Sprintf("no standby streams from physical slot %s in synchronized_standby_slots: walhook's stream waits for it", name))
		}
	}
	if len(phys) == 0 {
		lines = append(lines, "no standby uses a physical slot on this server (primary_slot_name): slot synchronisation needs one")
	}
	for _, p := range phys {
		if p.active && !p.feedback {
			lines = append(lines, fmt.Sprintf("the standby on physical slot %s sends no feedback: set hot_standby_feedback = on there "+
				"(and sync_replication_slots = on, with a dbname in primary_conninfo)", p.name))
		}
	}
	return lines, nil
}

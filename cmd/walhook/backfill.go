package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Polling of walhook backfill --follow: the progress is read this often;
// without a terminal a line is printed at most every followLineEvery (and
// whenever the status changes).
const (
	followPoll      = 500 * time.Millisecond
	followLineEvery = 5 * time.Second
	followBarWidth  = 30
)

func cmdBackfill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("backfill", stderr, &c, "database-url")
	follow := fs.Int64("follow", 0, "show the progress of backfill ID until it ends (exit 0 when done, 1 when failed or cancelled)")
	sub := fs.String("subscription", "", "start a backfill of this subscription (walhook.backfill), then follow it")
	tables := fs.StringSlice("table", nil, "with --subscription: only this mapped table (repeatable); default every table its events come from")
	detach := fs.Bool("no-follow", false, "with --subscription: print the backfill's id and return at once")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	switch {
	case (*follow == 0) == (*sub == ""):
		return usageError{"give --follow ID, or --subscription UUID to start a backfill"}
	case *sub == "" && (len(*tables) > 0 || *detach):
		return usageError{"--table and --no-follow go with --subscription"}
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	id := *follow
	if *sub != "" {
		var arg any
		if len(*tables) > 0 {
			arg = *tables
		}
		if err := conn.QueryRow(ctx, `SELECT walhook.backfill($1, $2)`, *sub, arg).Scan(&id); err != nil {
			return fmt.Errorf("start backfill: %w", err)
		}
		fmt.Fprintf(stdout, "backfill %d started\n", id)
		if *detach {
			return nil
		}
	}
	return followBackfill(ctx, conn, id, stdout, isTerminal(stdout))
}

// isTerminal says whether w is a character device, where a progress bar
// can redraw itself.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// backfillProgress is a backfill's progress summed over its tables.
type backfillProgress struct {
	status   string // done, failed, cancelled, running or pending
	table    string // the table being read, when one is
	sent     int64
	estimate int64 // 0 when unknown
	errs     []string
}

// readBackfill reads backfill id's tables from walhook.backfills.
func readBackfill(ctx context.Context, conn *pgx.Conn, id int64) (backfillProgress, error) {
	var p backfillProgress
	rows, err := conn.Query(ctx, `SELECT table_name, status, rows_sent, coalesce(estimate, 0), coalesce(error, '')
		FROM walhook.backfills WHERE id = $1 ORDER BY table_name`, id)
	if err != nil {
		return p, fmt.Errorf("read backfill %d: %w", id, err)
	}
	var table, status, msg string
	var sent, est int64
	n := 0
	count := map[string]int{}
	if _, err := pgx.ForEachRow(rows, []any{&table, &status, &sent, &est, &msg}, func() error {
		n++
		count[status]++
		p.sent += sent
		// A table sends at least what it sent: the estimate is the
		// planner's, and may be short or unknown.
		p.estimate += max(est, sent)
		if status == "running" {
			p.table = table
		}
		if msg != "" {
			p.errs = append(p.errs, table+": "+msg)
		}
		return nil
	}); err != nil {
		return p, fmt.Errorf("read backfill %d: %w", id, err)
	}
	switch {
	case n == 0:
		return p, fmt.Errorf("backfill %d does not exist (or belongs to another owner)", id)
	case count["pending"]+count["running"] > 0 && count["failed"]+count["cancelled"] == 0:
		p.status = "running"
		if count["running"] == 0 && count["done"] == 0 {
			p.status = "pending"
		}
	case count["failed"] > 0:
		p.status = "failed"
	case count["cancelled"] > 0:
		p.status = "cancelled"
	default:
		p.status = "done"
	}
	return p, nil
}

// finished says whether the backfill has ended: a failed or cancelled
// table ends it, though a cancel may leave others pending for a moment.
func (p backfillProgress) finished() bool { return p.status != "running" && p.status != "pending" }

// line renders the progress: a bar, the percentage, rows sent of the
// estimate and what is being read.
func (p backfillProgress) line(id int64) string {
	pct := -1
	switch {
	case p.status == "done":
		pct = 100
	case p.estimate > 0:
		pct = int(min(99, p.sent*100/p.estimate))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "backfill %d ", id)
	if pct >= 0 {
		fill := pct * followBarWidth / 100
		fmt.Fprintf(&b, "[%s%s] %3d%% ", strings.Repeat("#", fill), strings.Repeat(".", followBarWidth-fill), pct)
	}
	fmt.Fprintf(&b, "%d", p.sent)
	if p.estimate > 0 {
		fmt.Fprintf(&b, "/%d", p.estimate)
	}
	fmt.Fprintf(&b, " rows %s", p.status)
	if p.table != "" && !p.finished() {
		fmt.Fprintf(&b, " (%s)", p.table)
	}
	return b.String()
}

// followBackfill prints backfill id's progress until it ends: redrawn in
// place on a terminal, a line every few seconds otherwise. It returns nil
// when the backfill is done and an error saying why when it failed or was
// cancelled; it stops with ctx (Ctrl-C), the backfill going on.
func followBackfill(ctx context.Context, conn *pgx.Conn, id int64, w io.Writer, tty bool) error {
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	var last, lastStatus string
	var printed time.Time
	for {
		p, err := readBackfill(ctx, conn, id)
		if err != nil {
			if tty && last != "" {
				fmt.Fprintln(w)
			}
			return err
		}
		line := p.line(id)
		switch {
		case tty:
			// Pad over a longer line drawn before.
			fmt.Fprintf(w, "\r%-*s", len(last), line)
		case printed.IsZero() || p.finished() || p.status != lastStatus || time.Since(printed) >= followLineEvery:
			fmt.Fprintln(w, line)
			printed = time.Now()
		}
		last, lastStatus = line, p.status
		if p.finished() {
			if tty {
				fmt.Fprintln(w)
			}
			if p.status == "done" {
				return nil
			}
			msg := fmt.Sprintf("backfill %d %s", id, p.status)
			if len(p.errs) > 0 {
				msg += ": " + strings.Join(p.errs, "; ")
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			if tty {
				fmt.Fprintln(w)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

package main

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/schema"
)

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("status", stderr, &c, "database-url", "slot")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	v, err := schema.Version(ctx, conn)
	if err != nil {
		return err
	}
	if v == 0 {
		fmt.Fprintln(stdout, "walhook is not installed in this database (run walhook install)")
		return nil
	}
	fmt.Fprintf(stdout, "schema version   %d\n", v)
	si, err := cdc.Slot(ctx, conn, c.Slot)
	if err != nil {
		fmt.Fprintf(stdout, "slot             %s: %v\n", c.Slot, err)
	} else {
		state := "inactive"
		if si.Active {
			state = fmt.Sprintf("active (pid %d)", si.ActivePID)
		}
		fmt.Fprintf(stdout, "slot             %s, %s, confirmed %s, retains %d bytes of WAL\n", si.Name, state, si.ConfirmedFlush, si.RetainedBytes)
	}
	rows, err := conn.Query(ctx, `SELECT active, count(*) FROM walhook.subscriptions GROUP BY active ORDER BY active DESC`)
	if err != nil {
		return fmt.Errorf("count subscriptions: %w", err)
	}
	var active bool
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&active, &n}, func() error {
		state := "inactive"
		if active {
			state = "active"
		}
		fmt.Fprintf(stdout, "subscriptions    %d %s\n", n, state)
		return nil
	})
	if err != nil {
		return fmt.Errorf("count subscriptions: %w", err)
	}
	rows, err = conn.Query(ctx, `SELECT created_at::text, subscription_id::text, event, coalesce(response_status::text, '-'), coalesce(error, '')
		FROM walhook.attempts WHERE status = 'failed' ORDER BY id DESC LIMIT 10`)
	if err != nil {
		return fmt.Errorf("read recent failures: %w", err)
	}
	var at, sub, event, status, errText string
	fmt.Fprintln(stdout, "recent failures:")
	_, err = pgx.ForEachRow(rows, []any{&at, &sub, &event, &status, &errText}, func() error {
		fmt.Fprintf(stdout, "  %s  %s  %s  %s  %s\n", at, sub, event, status, errText)
		return nil
	})
	return err
}

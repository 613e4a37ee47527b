package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook"
)

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("status", stderr, &c, "database-url", "slot")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := walhook.Status(ctx, conn, c.Slot)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return printStatus(stdout, st)
}

package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapping"
)

func cmdInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("install", stderr, &c, "database-url", "config", "slot", "publication", "allow-http", "log-format")
	runRole := fs.String("run-role", "", "grant this role what walhook run needs (it must also have REPLICATION)")
	dryRun := fs.Bool("dry-run", false, "print what install would change, and change nothing")
	recreateSlot := fs.Bool("recreate-slot", false, "drop the replication slot, even one PostgreSQL invalidated, and create it anew "+
		"at the current position; changes committed in between are not streamed, so backfill them")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	cfg, _, err := loadConfig(c.Config)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	changes, err := walhook.Install(ctx, conn, cfg, walhook.InstallOptions{
		Slot: c.Slot, Publication: c.Publication, AllowHTTP: c.AllowHTTP, RunRole: *runRole, DryRun: *dryRun, RecreateSlot: *recreateSlot})
	if err != nil {
		return err
	}
	changed := slices.ContainsFunc(changes, func(ch string) bool { return !strings.HasPrefix(ch, "warning: ") })
	switch {
	case *dryRun && changed:
		fmt.Fprintln(stdout, "dry run, nothing changed; install would make these changes:")
	case *dryRun:
		fmt.Fprintln(stdout, "dry run: walhook is installed and up to date; install would change nothing")
	case !changed:
		fmt.Fprintln(stdout, "walhook is installed and up to date; nothing changed")
	}
	for _, ch := range changes {
		if *dryRun && !strings.HasPrefix(ch, "warning: ") {
			ch = "  " + ch
		}
		fmt.Fprintln(stdout, ch)
	}
	return nil
}

// loadConfig loads the config and compiles it as walhook.New would, so a
// mistake in it is reported with its file:line before anything runs.
func loadConfig(path string) (*mapping.Config, *mapping.Mapper, error) {
	cfg, err := mapping.Load(path)
	if err != nil {
		return nil, nil, err
	}
	if err := walhook.CheckConfig(cfg); err != nil {
		return nil, nil, err
	}
	m, err := mapping.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return cfg, m, nil
}

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("check", stderr, &c, "database-url", "config", "slot")
	if err := fs.parse(args, false); err != nil {
		return err
	}
	cfg, mapper, err := loadConfig(c.Config)
	if err != nil {
		return err
	}
	if c.DatabaseURL != "" {
		conn, err := pgx.Connect(ctx, c.DatabaseURL)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer conn.Close(context.WithoutCancel(ctx))
		warnings, err := walhook.Check(ctx, conn, cfg, walhook.CheckOptions{Slot: c.Slot})
		if err != nil {
			return err
		}
		for _, w := range warnings {
			fmt.Fprintln(stdout, "warning: "+w)
		}
		notes, err := walhook.PartitionNotes(ctx, conn, cfg)
		if err != nil {
			return err
		}
		for _, n := range notes {
			fmt.Fprintln(stdout, "note: "+n)
		}
		// What a failover would cost: the slot survives a promotion only on
		// 17+ with the settings these lines name.
		failover, err := cdc.FailoverReport(ctx, conn, c.Slot)
		if err != nil {
			return err
		}
		for _, f := range failover {
			fmt.Fprintln(stdout, "failover: "+f)
		}
	}
	fmt.Fprintf(stdout, "%s: ok: %d table(s), %d event(s)\n", cfg.File, len(cfg.Tables), len(mapper.Events()))
	for _, e := range mapper.Events() {
		fmt.Fprintf(stdout, "  %-28s %s %s\n", e.Name, e.Table, e.Op)
	}
	return nil
}

func cmdUninstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("uninstall", stderr, &c, "database-url", "slot", "publication")
	dropSchema := fs.Bool("drop-schema", false, "also drop schema walhook with every subscription and attempt")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	changes, err := walhook.Uninstall(ctx, conn, walhook.UninstallOptions{Slot: c.Slot, Publication: c.Publication, DropSchema: *dropSchema})
	if err != nil {
		return err
	}
	for _, ch := range changes {
		fmt.Fprintln(stdout, ch)
	}
	return nil
}

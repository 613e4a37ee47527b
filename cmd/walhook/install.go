package main

import (
	"context"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/acl"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/mapping"
)

func cmdInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("install", stderr, &c, "database-url", "config", "slot", "publication", "allow-http", "log-format")
	runRole := fs.String("run-role", "", "grant this role what walhook run needs (it must also have REPLICATION)")
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
		Slot: c.Slot, Publication: c.Publication, AllowHTTP: c.AllowHTTP, RunRole: *runRole})
	if err != nil {
		return err
	}
	if len(changes) == 0 {
		fmt.Fprintln(stdout, "walhook is installed and up to date; nothing changed")
		return nil
	}
	for _, ch := range changes {
		fmt.Fprintln(stdout, ch)
	}
	return nil
}

// loadConfig loads the config and compiles its mapping and rules.
func loadConfig(path string) (*mapping.Config, *mapping.Mapper, error) {
	cfg, m, _, err := loadConfigRules(path)
	return cfg, m, err
}

func loadConfigRules(path string) (*mapping.Config, *mapping.Mapper, *acl.Rules, error) {
	cfg, err := mapping.Load(path)
	if err != nil {
		return nil, nil, nil, err
	}
	m, err := mapping.New(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	rules, err := acl.Compile(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	return cfg, m, rules, nil
}

func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("check", stderr, &c, "database-url", "config")
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
		if err := walhook.CheckCatalog(ctx, conn, cfg); err != nil {
			return err
		}
		warnings, err := walhook.IdentityWarnings(ctx, conn, cfg)
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
	dropped, err := cdc.DropSlot(ctx, conn, c.Slot)
	if err != nil {
		return err
	}
	if dropped {
		fmt.Fprintf(stdout, "dropped replication slot %s\n", c.Slot)
	}
	if err := cdc.DropPublication(ctx, conn, c.Publication); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "dropped publication %s\n", c.Publication)
	line, err := walhook.DropPartitionTrigger(ctx, conn)
	if err != nil {
		return err
	}
	if line != "" {
		fmt.Fprintln(stdout, line)
	}
	if *dropSchema {
		if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS walhook CASCADE`); err != nil {
			return fmt.Errorf("drop schema walhook: %w", err)
		}
		fmt.Fprintln(stdout, "dropped schema walhook")
	}
	return nil
}

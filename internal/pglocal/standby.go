package pglocal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
)

// StandbyOptions configures StartStandby.
type StandbyOptions struct {
	// Logf, when set, receives progress messages.
	Logf func(format string, args ...any)
	// Slot is the physical replication slot on the primary that the standby
	// streams from; StartStandby creates it. Required: slot synchronisation
	// (17+) needs primary_slot_name.
	Slot string
	// Database goes into primary_conninfo as dbname, which slot
	// synchronisation needs to read the primary's logical slots.
	Database string
	// ExtraConf adds settings, as Options.ExtraConf does, e.g.
	// sync_replication_slots and hot_standby_feedback.
	ExtraConf map[string]string
}

// StartStandby makes a streaming standby of s and starts it: s is stopped
// cleanly, its data directory copied (the npm server bundles have no
// pg_basebackup, and a cold copy of a cleanly stopped cluster is a valid
// base backup), and s started again on its port. The copy gets
// standby.signal and primary_conninfo/primary_slot_name, and runs like any
// server of this package: its own directory, port, watchdog and Stop.
// Only for servers this package started from binaries.
func (s *Server) StartStandby(ctx context.Context, opts StandbyOptions) (*Server, error) {
	if s.external || s.docker != nil {
		return nil, errors.New("pglocal: StartStandby needs a server started from local binaries")
	}
	if opts.Slot == "" || opts.Database == "" {
		return nil, errors.New("pglocal: StartStandby: Slot and Database are required")
	}
	logf := opts.Logf
	if logf == nil {
		logf = s.logf
	}
	extra, err := extraConfLines(opts.ExtraConf)
	if err != nil {
		return nil, err
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s application_name=%s",
		s.port, libpqQuote(opts.Database), libpqQuote(opts.Slot))
	extra = append(extra,
		"primary_conninfo = "+confQuote(conninfo),
		"primary_slot_name = "+confQuote(opts.Slot))

	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return nil, fmt.Errorf("pglocal: connect: %w", err)
	}
	_, err = conn.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", opts.Slot)
	conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("pglocal: create physical slot %q: %w", opts.Slot, err)
	}

	dir, err := os.MkdirTemp(tempBase(s.cred != nil), "walhook-pglocal-")
	if err != nil {
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	sb := &Server{
		binDir:  s.binDir,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logFile: filepath.Join(dir, "postgres.log"),
		cred:    s.cred,
		logf:    logf,
	}
	if err := sb.chown(dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if sb.wd, err = startWatchdog(filepath.Join(sb.binDir, "pg_ctl"), sb.dataDir, dir, sb.cred); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	t0 := time.Now()
	if err := s.coldCopy(ctx, sb.dataDir); err != nil {
		sb.Stop()
		return nil, err
	}
	// The copy holds the primary's physical slot, which on the standby would
	// only pin WAL; and no postmaster.pid, since the primary stopped cleanly.
	if err := os.RemoveAll(filepath.Join(sb.dataDir, "pg_replslot", opts.Slot)); err != nil {
		sb.Stop()
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	signal := filepath.Join(sb.dataDir, "standby.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		sb.Stop()
		return nil, fmt.Errorf("pglocal: %w", err)
	}
	if err := sb.chown(signal); err != nil {
		sb.Stop()
		return nil, err
	}
	if err := sb.startOnFreePort(ctx, extra); err != nil {
		sb.Stop()
		return nil, err
	}
	if err := sb.readVersion(ctx); err != nil {
		sb.Stop()
		return nil, err
	}
	logf("pglocal: standby of 127.0.0.1:%d ready on 127.0.0.1:%d in %s (dir %s)",
		s.port, sb.port, time.Since(t0).Round(time.Millisecond), dir)
	return sb, nil
}

// coldCopy stops s cleanly, copies its data directory to dst (keeping
// owner and modes) and starts s again.
func (s *Server) coldCopy(ctx context.Context, dst string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pglocal: server is stopped")
	}
	if err := s.pgctlStop(ctx, "fast"); err != nil {
		return err
	}
	out, cerr := exec.CommandContext(ctx, "cp", "-a", s.dataDir, dst).CombinedOutput()
	if _, err := s.pgctlStart(ctx); err != nil {
		return errors.Join(err, cerr)
	}
	if cerr != nil {
		return fmt.Errorf("pglocal: copy %s: %w\n%s", s.dataDir, cerr, out)
	}
	return nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sourcegraph/conc"
)

// Roles a process can have, as /readyz reports them.
const (
	roleStarting = "starting"
	roleStandby  = "standby"
	roleLeader   = "leader"
)

// serviceState is what the health endpoint reports.
type serviceState struct {
	role      atomic.Value // string
	streaming atomic.Bool
}

func newServiceState() *serviceState {
	s := &serviceState{}
	s.role.Store(roleStarting)
	return s
}

func (s *serviceState) Role() string { return s.role.Load().(string) }

// errLostLeadership ends a pipeline whose lock connection failed: another
// process may take the slot now, so this one must stop.
var errLostLeadership = errors.New("lost the leader lock: its connection failed")

// leaderLockKey is the session advisory lock that elects one leader per slot.
func leaderLockKey(slot string) int64 {
	h := fnv.New64a()
	h.Write([]byte("walhook leader\x00" + slot))
	return int64(h.Sum64())
}

// lead waits until this process holds the leader lock for sc.Slot, then runs
// fn with a context that ends if the lock's connection is lost. Standbys poll
// every pollEvery, so a dead leader is replaced within seconds: PostgreSQL
// releases a session lock as soon as the session ends.
func lead(soft, hard context.Context, sc serviceConfig, state *serviceState, fn func(soft, hard context.Context) error) error {
	log := sc.Logger
	const pollEvery = time.Second
	key := leaderLockKey(sc.Slot)
	announced := false
	var standby *standbyWork
	defer func() { standby.stop() }()
	for {
		conn, err := pgx.Connect(hard, sc.DatabaseURL)
		if err != nil {
			return fmt.Errorf("connect for the leader lock: %w", err)
		}
		var got bool
		if err := conn.QueryRow(hard, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
			conn.Close(context.WithoutCancel(hard))
			return fmt.Errorf("take the leader lock: %w", err)
		}
		if got {
			// The leader runs its own queue; the standby's must end first so
			// one process never claims with two.
			standby.stop()
			standby = nil
			state.role.Store(roleLeader)
			log.Info("leading", "slot", sc.Slot)
			err := holdWhile(soft, hard, conn, sc.HeartbeatInterval, log, fn)
			conn.Close(context.WithoutCancel(hard))
			state.role.Store(roleStarting)
			return err
		}
		conn.Close(context.WithoutCancel(hard))
		state.role.Store(roleStandby)
		if !announced {
			log.Info("standing by: another walhook leads this slot; working the retry queue meanwhile", "slot", sc.Slot)
			announced = true
		}
		if standby == nil {
			standby = startStandbyWork(hard, sc)
		}
		select {
		case <-time.After(pollEvery):
		case <-soft.Done():
			return nil
		}
	}
}

// holdWhile runs fn while checking the lock connection; it also emits the
// heartbeat, a non-transactional logical message that moves the slot's
// position even when this database writes nothing at all.
func holdWhile(soft, hard context.Context, conn *pgx.Conn, heartbeat time.Duration, log *slog.Logger, fn func(soft, hard context.Context) error) error {
	ctx, cancel := context.WithCancelCause(hard)
	defer cancel(nil)
	if heartbeat <= 0 {
		heartbeat = 30 * time.Second
	}
	var wg conc.WaitGroup
	defer wg.Wait()
	done := make(chan struct{})
	defer close(done)
	wg.Go(func() {
		t := time.NewTicker(min(heartbeat, 2*time.Second))
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			var err error
			if time.Since(last) >= heartbeat {
				_, err = conn.Exec(pctx, `SELECT pg_logical_emit_message(false, 'walhook.heartbeat', '')`)
				last = time.Now()
			} else {
				err = conn.Ping(pctx)
			}
			pcancel()
			if err != nil && ctx.Err() == nil {
				log.Error("leader lock connection failed; stopping the pipeline", "err", err)
				cancel(errLostLeadership)
				return
			}
		}
	})
	err := fn(soft, ctx)
	if cause := context.Cause(ctx); errors.Is(cause, errLostLeadership) {
		return cause
	}
	return err
}

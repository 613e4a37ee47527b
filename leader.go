package walhook

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/stage"
)

// errLostLeadership ends a pipeline whose lock connection failed: another
// process may take the slot now, so this one must stop.
var errLostLeadership = errors.New("lost the leader lock: its connection failed")

// leaderLockKey is the session advisory lock that elects one leader per slot.
func leaderLockKey(slot string) int64 {
	h := fnv.New64a()
	h.Write([]byte("walhook leader\x00" + slot))
	return int64(h.Sum64())
}

// lead waits until this process holds the leader lock for the slot, then
// runs fn with a context that ends if the lock's connection is lost.
// Standbys poll every pollEvery, so a dead leader is replaced within seconds:
// PostgreSQL releases a session lock as soon as the session ends. While it
// stands by, the process works the retry queue.
func (s *Service) lead(soft, hard context.Context, fn func(soft, hard context.Context) error) error {
	const pollEvery = time.Second
	key := leaderLockKey(s.cfg.Slot)
	announced := false
	for {
		conn, err := pgx.Connect(hard, s.cfg.DatabaseURL)
		if err != nil {
			return fmt.Errorf("connect for the leader lock: %w", err)
		}
		var got bool
		if err := conn.QueryRow(hard, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
			conn.Close(context.WithoutCancel(hard))
			return fmt.Errorf("take the leader lock: %w", err)
		}
		if got {
			// The standby's queue stops claiming at once; its attempts under
			// way finish in the background (or their leases lapse), so a
			// promotion never waits for a slow receiver.
			s.standby.release()
			s.state.role.Store(RoleLeader)
			s.log.Info("leading", "slot", s.cfg.Slot)
			err := s.holdWhile(soft, hard, conn, fn)
			conn.Close(context.WithoutCancel(hard))
			s.state.role.Store(RoleStarting)
			return err
		}
		conn.Close(context.WithoutCancel(hard))
		s.state.role.Store(RoleStandby)
		if !announced {
			s.log.Info("standing by: another walhook leads this slot; working the retry queue meanwhile", "slot", s.cfg.Slot)
			announced = true
		}
		s.standby.ensure(hard, s)
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
func (s *Service) holdWhile(soft, hard context.Context, conn *pgx.Conn, fn func(soft, hard context.Context) error) error {
	g := stage.NewGroup(hard)
	ctx := g.Context()
	heartbeat := s.cfg.HeartbeatInterval
	done := make(chan struct{})
	g.Go("leader lock", ctx, func() error {
		t := time.NewTicker(min(heartbeat, 2*time.Second))
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				return nil
			case <-ctx.Done():
				return nil
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
				s.log.Error("leader lock connection failed; stopping the pipeline", "err", err)
				return errLostLeadership
			}
		}
	})
	err := stage.Run("pipeline", func() error { return fn(soft, ctx) })
	close(done)
	g.Cancel()
	g.Wait()
	if cause := g.Cause(); errors.Is(cause, errLostLeadership) {
		return cause
	}
	return err
}

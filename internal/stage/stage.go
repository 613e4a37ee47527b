// Package stage runs the goroutines of walhook's pipeline so that a panic is
// an error of the run, not a crash held until someone waits.
//
// sourcegraph/conc re-panics only at Wait, which a long-running pipeline may
// never reach while its other stages carry on; a stage that panicked would
// then leave the service half alive (reading stopped, readiness still green).
// Run turns the panic into a *PanicError, with the stack, at the moment it
// happens, and Group cancels the stage's siblings with it as the cause.
package stage

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"

	"github.com/sourcegraph/conc"
)

// PanicError is a panic recovered from a stage.
type PanicError struct {
	Stage string
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("stage %s panicked: %v", e.Stage, e.Value)
}

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// Run calls fn and returns its error, or a *PanicError if it panics.
func Run(name string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Stage: name, Value: r, Stack: debug.Stack()}
		}
	}()
	return fn()
}

// IsPanic reports whether err is or wraps a *PanicError.
func IsPanic(err error) bool {
	var pe *PanicError
	return errors.As(err, &pe)
}

// Group runs stages that live and die together. The first stage to fail —
// return an error while its own context is live, or panic at any time —
// cancels the group's context with that error as the cause; OnFail, when
// set, is told once, at that moment.
type Group struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     conc.WaitGroup
	once   sync.Once
	// OnFail is called once with the first failure, before the siblings see
	// the cancellation. Set it before the first Go.
	OnFail func(error)
}

// NewGroup returns a group whose context derives from parent.
func NewGroup(parent context.Context) *Group {
	ctx, cancel := context.WithCancelCause(parent)
	return &Group{ctx: ctx, cancel: cancel}
}

// Context is cancelled when a stage fails or Cancel is called.
func (g *Group) Context() context.Context { return g.ctx }

// Cause returns the first failure, or nil while there is none (a Cancel
// with nil is no failure).
func (g *Group) Cause() error {
	err := context.Cause(g.ctx)
	if err == context.Canceled { //nolint:errorlint // the plain cancel of Cancel, not a failure that wraps it
		return nil
	}
	return err
}

// Go runs fn as the stage name. live is the context whose end makes an
// error from fn expected (a stop), not a failure.
func (g *Group) Go(name string, live context.Context, fn func() error) {
	g.wg.Go(func() {
		err := Run(name, fn)
		if err == nil {
			return
		}
		if IsPanic(err) || live.Err() == nil {
			g.Fail(err)
		}
	})
}

// Fail records err as the group's failure unless one is recorded already,
// and cancels the group.
func (g *Group) Fail(err error) {
	g.once.Do(func() {
		if g.ctx.Err() == nil && g.OnFail != nil {
			g.OnFail(err)
		}
		g.cancel(err)
	})
}

// Cancel ends the group's context without a failure.
func (g *Group) Cancel() { g.cancel(nil) }

// Wait waits for every stage.
func (g *Group) Wait() { g.wg.Wait() }

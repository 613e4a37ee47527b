package walhook

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/internal/console"
)

// consoleState is the Service's console and portal (internal/console),
// made on the first call of Handler.
type consoleState struct {
	once sync.Once
	c    *console.Console
	err  error
}

// consoleHandler serves /console/ and /portal/; when the console cannot be
// built (a template fails to parse, which tests catch) those paths answer
// 500 and the rest of Handler works on.
func (s *Service) consoleHandler() http.Handler {
	st := &s.console
	st.once.Do(func() {
		st.c, st.err = console.New(console.Config{
			DatabaseURL:    s.cfg.DatabaseURL,
			Token:          s.cfg.ConsoleToken,
			PublicURL:      s.cfg.PublicURL,
			FrameAncestors: s.cfg.PortalFrameAncestors,
			Health: func() console.Health {
				h := s.Health()
				return console.Health{Ready: h.Ready, Role: h.Role, Detail: h.Detail, LastError: h.LastError,
					LastErrorAt: h.LastErrorAt, Restarts: h.Restarts}
			},
			Status: func(ctx context.Context, conn *pgx.Conn) (any, error) { return Status(ctx, conn, s.cfg.Slot) },
		}, s.log)
	})
	if st.err != nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "console unavailable: "+st.err.Error(), http.StatusInternalServerError)
		})
	}
	return st.c
}

// startConsole records the public URL portal links start with and returns
// what closes the console's pool when Run ends.
func (s *Service) startConsole(ctx context.Context) func() {
	if s.cfg.PublicURL != "" {
		if conn, err := pgx.Connect(ctx, s.cfg.DatabaseURL); err != nil {
			s.log.Warn("could not record the public URL for portal links", "err", err)
		} else {
			if err := console.RecordPublicURL(ctx, conn, s.cfg.PublicURL); err != nil {
				s.log.Warn("could not record the public URL for portal links", "err", err)
			}
			conn.Close(context.WithoutCancel(ctx))
		}
	}
	return func() {
		if s.console.c != nil {
			s.console.c.Close()
		}
	}
}

// validateConsole checks the console's fields of c.
func (c *Config) validateConsole(add func(field, format string, args ...any)) {
	if c.PublicURL != "" {
		if err := console.ValidatePublicURL(c.PublicURL); err != nil {
			add("PublicURL", "%v", err)
		}
	}
	for i, a := range c.PortalFrameAncestors {
		if err := console.ValidateFrameAncestor(a); err != nil {
			add(fmt.Sprintf("PortalFrameAncestors[%d]", i), "%v", err)
		}
	}
}

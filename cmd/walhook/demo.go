package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sourcegraph/conc"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/demo"
	"github.com/walhook/walhook/internal/pglocal"
)

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("demo", stderr, &c, "log-format")
	keep := fs.Bool("keep", false, "keep PostgreSQL, walhook and the receiver running until interrupted, and print the DSN")
	if err := fs.parse(args, false); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := quietLogger(stderr, c.LogFormat)

	fmt.Fprintln(stdout, "starting a throwaway PostgreSQL ...")
	srv, err := pglocal.Start(ctx, pglocal.Options{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	dsn, err := srv.CreateDatabase(ctx, "walhook_demo")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, demo.Schema); err != nil {
		return fmt.Errorf("create demo schema: %w", err)
	}

	dir, err := os.MkdirTemp("", "walhook-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgPath := filepath.Join(dir, "walhook.yaml")
	if err := os.WriteFile(cfgPath, demo.Config, 0o600); err != nil {
		return err
	}
	cfg, mapper, err := loadConfig(cfgPath)
	if err != nil {
		return err
	}
	changes, err := walhook.Install(ctx, conn, cfg, walhook.InstallOptions{AllowHTTP: true})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed walhook (%d change(s)); events: ", len(changes))
	for i, e := range mapper.Events() {
		if i > 0 {
			fmt.Fprint(stdout, ", ")
		}
		fmt.Fprint(stdout, e.Name)
	}
	fmt.Fprintln(stdout)

	recv := newDemoReceiver(stdout)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen for the receiver: %w", err)
	}
	hs := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	var wg conc.WaitGroup
	defer wg.Wait()
	defer hs.Close()
	wg.Go(func() { _ = hs.Serve(ln) })
	base := "http://" + ln.Addr().String()

	type sub struct{ event, path, dialect, secret string }
	subsToMake := []sub{
		{"order.created", "/hooks/orders", "default", "generate"},
		{"order.updated", "/hooks/orders", "default", ""},
		{"order.deleted", "/hooks/orders", "default", ""},
		{"order.paid", "/hooks/orders", "default", ""},
		{"customer.created", "/hooks/zapier", "zapier", ""},
	}
	for _, s := range subsToMake {
		var secret any
		if s.secret != "" {
			secret = s.secret
		}
		var id string
		err := conn.QueryRow(ctx, `SELECT walhook.subscribe($1, $2, '1', '/', $3, $4)::text`,
			s.event, base+s.path, s.dialect, secret).Scan(&id)
		if err != nil {
			return fmt.Errorf("subscribe to %s: %w", s.event, err)
		}
		fmt.Fprintf(stdout, "subscribed %-16s -> %s (dialect %s) as %s\n", s.event, base+s.path, s.dialect, id)
	}

	svc, err := walhook.New(walhook.Config{
		DatabaseURL: dsn, Mapping: cfg, AllowHTTP: true, AllowPrivateTargets: true,
		StandbyInterval: time.Second, ShutdownTimeout: 5 * time.Second,
	}, log)
	if err != nil {
		return err
	}
	var svcErr error
	var running conc.WaitGroup
	running.Go(func() { svcErr = svc.Run(ctx) })
	defer running.Wait()
	defer func() { _ = svc.Stop(ctx) }()

	fmt.Fprintln(stdout, "\nwriting: a customer, an order, the order paid, a rolled-back order, an unmapped audit row, the order deleted")
	writes := []string{
		`INSERT INTO public.customers (tenant_id, tenant_path, name, email, password_hash) VALUES (7, '/acme/east', 'Grace', 'grace@example.com', 'x')`,
		`INSERT INTO public.orders (customer_id, tenant_id, tenant_path, total, internal_note) VALUES (1, 7, '/acme/east', 42.50, 'not for receivers')`,
		`UPDATE public.orders SET status = 'paid', paid_at = now() WHERE id = 1`,
		`BEGIN; INSERT INTO public.orders (tenant_id, total) VALUES (7, 1); ROLLBACK`,
		`INSERT INTO public.audit_log (note) VALUES ('walhook does not publish this table')`,
		`DELETE FROM public.orders WHERE id = 1`,
	}
	for _, w := range writes {
		if _, err := conn.Exec(ctx, w); err != nil {
			return fmt.Errorf("demo write %q: %w", w, err)
		}
	}
	const want = 5
	fmt.Fprintf(stdout, "waiting for %d webhooks ...\n\n", want)
	select {
	case <-recv.reached(want):
	case <-time.After(60 * time.Second):
		return fmt.Errorf("demo: %d of %d webhooks arrived within a minute", recv.count(), want)
	case <-ctx.Done():
		return ctx.Err()
	}
	fmt.Fprintf(stdout, "all %d webhooks arrived (order.paid derived from the update); the rolled-back order and the unmapped table produced none.\n", want)
	if *keep {
		fmt.Fprintf(stdout, "\nwalhook keeps running. Connect with:\n  psql '%s'\nand try:\n  SELECT walhook.subscribe('order.created', '%s/hooks/mine', 'me');\n  INSERT INTO public.orders (tenant_id, total) VALUES (7, 9.99);\nPress Ctrl-C to stop.\n", dsn, base)
		<-ctx.Done()
	}
	_ = svc.Stop(ctx)
	running.Wait()
	if svcErr != nil && !errors.Is(svcErr, context.Canceled) {
		return svcErr
	}
	return nil
}

// demoReceiver prints each webhook it gets.
type demoReceiver struct {
	mu    sync.Mutex
	out   io.Writer
	n     int
	waits map[int]chan struct{}
}

func newDemoReceiver(out io.Writer) *demoReceiver {
	return &demoReceiver{out: out, waits: map[int]chan struct{}{}}
}

func (d *demoReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var pretty bytes.Buffer
	if json.Indent(&pretty, body, "    ", "  ") != nil {
		pretty.Reset()
		pretty.Write(body)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.n++
	fmt.Fprintf(d.out, "<- %s %s  webhook-id: %s\n", r.Method, r.URL.Path, r.Header.Get("webhook-id"))
	if sig := r.Header.Get("webhook-signature"); sig != "" {
		fmt.Fprintf(d.out, "   webhook-signature: %s\n", sig)
	}
	if v := r.Header.Get("X-Source"); v != "" {
		fmt.Fprintf(d.out, "   X-Source: %s\n", v)
	}
	fmt.Fprintf(d.out, "    %s\n\n", strings.TrimSpace(pretty.String()))
	for n, ch := range d.waits {
		if d.n >= n {
			close(ch)
			delete(d.waits, n)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (d *demoReceiver) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}

// reached returns a channel closed once n webhooks have arrived.
func (d *demoReceiver) reached(n int) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	ch := make(chan struct{})
	if d.n >= n {
		close(ch)
		return ch
	}
	d.waits[n] = ch
	return ch
}

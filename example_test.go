package walhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/internal/pglocal"
	"github.com/walhook/walhook/mapping"
)

// A Go program running walhook in-process: it installs walhook for a
// config held in memory, subscribes a receiver with the SQL API, runs the
// service, and stops it once the first webhook has arrived.
func Example() {
	ctx := context.Background()
	dsn := exampleDatabase(ctx) // your application's database (wal_level=logical)

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE public.orders (id bigint PRIMARY KEY, total numeric NOT NULL)`); err != nil {
		log.Fatal(err)
	}

	cfg, err := mapping.Parse("walhook.yaml", []byte(`
tables:
  - table: public.orders
    noun: order
    acl: "true"
`))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := walhook.Install(ctx, conn, cfg, walhook.InstallOptions{AllowHTTP: true}); err != nil {
		log.Fatal(err)
	}

	got := make(chan string, 1)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var env struct {
			Event string          `json:"event"`
			Data  json.RawMessage `json:"data"`
		}
		_ = json.Unmarshal(body, &env)
		got <- env.Event + " " + string(env.Data)
	}))
	defer receiver.Close()
	if _, err := conn.Exec(ctx, `SELECT walhook.subscribe('order.created', $1, 'shop')`, receiver.URL+"/hooks"); err != nil {
		log.Fatal(err)
	}

	svc, err := walhook.New(walhook.Config{
		DatabaseURL: dsn,
		Mapping:     cfg,
		// The receiver is plain HTTP on loopback: allowed here on purpose.
		AllowHTTP:           true,
		AllowPrivateTargets: true,
	}, nil)
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }() //nolint:conc // an example keeps to the standard library

	if _, err := conn.Exec(ctx, `INSERT INTO public.orders VALUES (1, 9.99)`); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-got)

	if err := svc.Stop(ctx); err != nil { // drain, acknowledge, return
		log.Fatal(err)
	}
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Output: order.created {"id":1,"total":9.99}
}

// exampleDatabase creates a database on the throwaway PostgreSQL the tests
// share; a program would connect to its own.
func exampleDatabase(ctx context.Context) string {
	srv, err := pglocal.Shared()
	if err != nil {
		log.Fatal(err)
	}
	dsn, err := srv.CreateDatabase(ctx, pglocal.DatabaseName("example", 0))
	if err != nil {
		log.Fatal(err)
	}
	return dsn
}

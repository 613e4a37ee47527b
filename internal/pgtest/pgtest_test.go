package pgtest

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func queryString(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(t.Context(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func dbExists(t *testing.T, conn *pgx.Conn, name string) bool {
	t.Helper()
	return queryString(t, conn, "SELECT count(*)::text FROM pg_database WHERE datname = $1", name) == "1"
}

func TestNewDatabase(t *testing.T) {
	srv := SharedServer(t)
	admin := Connect(t, srv.URL())
	var inner []string
	t.Run("inner", func(t *testing.T) {
		for range 2 {
			dsn := NewDatabase(t)
			c := Connect(t, dsn)
			inner = append(inner, queryString(t, c, "SELECT current_database()"))
		}
		if inner[0] == inner[1] {
			t.Fatalf("two NewDatabase calls gave the same database %q", inner[0])
		}
		for _, name := range inner {
			if !strings.HasPrefix(name, "testnewdatabase_inner_") {
				t.Errorf("database %q is not named after the test", name)
			}
		}
	})
	for _, name := range inner {
		if dbExists(t, admin, name) {
			t.Errorf("database %q outlived its test", name)
		}
	}
}

package pglocal

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	dc "github.com/ory/dockertest/v3/docker"
)

// TestDocker runs the Docker path for real: a container started through
// dockertest, with the settings a local server gets, restarted both ways
// and removed by Stop. It needs a Docker daemon and an image, so it runs
// only when WALHOOK_TEST_PG_DOCKER=1 asks for that path; .ci/run starts a
// daemon, builds the image and sets it. That is a choice of path, not a
// missing PostgreSQL, which still fails every other test.
func TestDocker(t *testing.T) {
	if os.Getenv(EnvDocker) != "1" {
		t.Skipf("the Docker path runs with %s=1 and a Docker daemon (.ci/run does both)", EnvDocker)
	}
	t.Setenv(EnvDatabaseURL, "")
	srv, err := Start(t.Context(), Options{Logf: t.Logf, ExtraConf: map[string]string{"wal_writer_delay": "10ms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	if srv.docker == nil {
		t.Fatalf("%s=1 gave a server from %q, not a container", EnvDocker, srv.BinDir())
	}
	id := srv.docker.res.Container.ID
	c, err := srv.docker.pool.Client.InspectContainer(id)
	if err != nil {
		t.Fatal(err)
	}
	if c.HostConfig.NetworkMode != "host" {
		t.Errorf("container network mode %q, want host (no bridge, loopback only)", c.HostConfig.NetworkMode)
	}

	conn := connect(t, srv.URL())
	for setting, want := range map[string]string{
		"wal_level":             "logical",
		"listen_addresses":      "127.0.0.1",
		"max_replication_slots": "64",
		"wal_writer_delay":      "10ms",
		"fsync":                 "off",
	} {
		if got := queryString(t, conn, "SHOW "+setting); got != want {
			t.Errorf("SHOW %s = %q, want %q", setting, got, want)
		}
	}
	if srv.Version() < 140000 {
		t.Errorf("Version() = %d, want 14 or later", srv.Version())
	}

	name := DatabaseName(t.Name(), 0)
	dsn, err := srv.CreateDatabase(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	db := connect(t, dsn)
	exec1(t, db, "CREATE TABLE t (id int PRIMARY KEY)")
	exec1(t, db, "CREATE PUBLICATION p FOR TABLE t")
	exec1(t, db, "SELECT pg_create_logical_replication_slot('docker_slot', 'pgoutput')")
	// Durable before the immediate restart, whatever synchronous_commit says.
	exec1(t, db, "SET synchronous_commit = on")
	exec1(t, db, "INSERT INTO t VALUES (1)")
	db.Close(t.Context())

	// Both restart modes keep the data, the slot and the port.
	for _, mode := range []string{"immediate", "fast"} {
		if err := srv.Restart(t.Context(), mode); err != nil {
			t.Fatalf("Restart(%s): %v", mode, err)
		}
		db := connect(t, dsn)
		waitFor(t, 10*time.Second, "pgoutput to decode the insert after restart -m "+mode, func() (bool, error) {
			var n int
			err := db.QueryRow(t.Context(), `SELECT count(*) FROM pg_logical_slot_peek_binary_changes('docker_slot', NULL, NULL,
				'proto_version', '1', 'publication_names', 'p')`).Scan(&n)
			return n == 4, err
		})
		db.Close(t.Context())
	}
	if err := srv.DropDatabase(t.Context(), name); err != nil {
		t.Fatal(err)
	}

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err = srv.docker.pool.Client.InspectContainer(id)
	var nf *dc.NoSuchContainer
	if !errors.As(err, &nf) {
		t.Errorf("container %.12s after Stop: %v, want it removed", id, err)
	}
}

// TestDockerBadImage checks that an image name without a tag is refused
// before any container starts.
func TestDockerBadImage(t *testing.T) {
	if os.Getenv(EnvDocker) != "1" {
		t.Skipf("the Docker path runs with %s=1 and a Docker daemon (.ci/run does both)", EnvDocker)
	}
	t.Setenv(EnvDatabaseURL, "")
	t.Setenv(EnvImage, "postgres")
	_, err := Start(t.Context(), Options{})
	if err == nil || !strings.Contains(err.Error(), EnvImage) {
		t.Fatalf("Start with %s=postgres: %v, want an error naming %s", EnvImage, err, EnvImage)
	}
}

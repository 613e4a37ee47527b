package pglocal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
)

// EnvImage names the environment variable that picks the image of the
// Docker path, as repository:tag.
const EnvImage = "WALHOOK_TEST_PG_IMAGE"

// DefaultImage is the image of the Docker path when EnvImage is unset.
const DefaultImage = "postgres:17"

// EnvDocker names the environment variable that forces the Docker path
// ("1") even when server binaries are on the machine; "0" turns it off.
// Unset, Docker is the fall-back when no binaries are found.
const EnvDocker = "WALHOOK_TEST_PG_DOCKER"

// dockerPingTimeout bounds the question "does a Docker daemon answer?",
// asked on every Start that found no binaries.
const dockerPingTimeout = 3 * time.Second

// dockerReadyTimeout bounds the wait for the container's server: the image's
// entrypoint runs initdb first, then starts the server that listens on TCP.
const dockerReadyTimeout = 2 * time.Minute

// dockerLabel marks the containers pglocal starts, so that one left behind
// by a killed process can be found: docker ps -af label=walhook.pglocal.
const dockerLabel = "walhook.pglocal"

// dockerServer is the part of a Server that lives in a container.
type dockerServer struct {
	pool  *dockertest.Pool
	res   *dockertest.Resource
	image string
}

// InContainer says whether the server runs in a container (the Docker
// path), where what needs its data directory, such as StartStandby, is not
// available.
func (s *Server) InContainer() bool { return s.docker != nil }

// dockerPool returns a client of the Docker daemon that DOCKER_HOST (or the
// default socket) names, when it answers within dockerPingTimeout.
func dockerPool(ctx context.Context) (*dockertest.Pool, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, dockerPingTimeout)
	defer cancel()
	if err := pool.Client.PingWithContext(ctx); err != nil {
		return nil, err
	}
	return pool, nil
}

// startDocker runs the image with the same settings a local server gets,
// on the host's network so that the server listens on 127.0.0.1 only, at a
// port that is free on the host: no bridge, no published ports, no address
// outside loopback.
func startDocker(ctx context.Context, pool *dockertest.Pool, image string, extra []string, logf func(string, ...any)) (*Server, error) {
	repo, tag, ok := strings.Cut(image, ":")
	if !ok || repo == "" || tag == "" {
		return nil, fmt.Errorf("pglocal: %s=%q: want repository:tag, e.g. %s", EnvImage, image, DefaultImage)
	}
	if _, err := pool.Client.InspectImage(image); err != nil {
		// dockertest would pull it; say first, since a pull can take minutes
		// and fails on machines without a registry.
		logf("pglocal: image %s not present: %v; docker will pull it", image, err)
	}
	begin := time.Now()
	var (
		s   *Server
		err error
	)
	for attempt := 1; attempt <= startAttempts; attempt++ {
		s, err = startContainer(ctx, pool, repo, tag, extra, logf)
		if err == nil || !strings.Contains(err.Error(), "could not bind") && !strings.Contains(err.Error(), "Address already in use") {
			break
		}
		logf("pglocal: port was taken (attempt %d/%d)", attempt, startAttempts)
	}
	if err != nil {
		return nil, err
	}
	logf("pglocal: PostgreSQL %d in container %.12s of %s ready on 127.0.0.1:%d in %s",
		s.version, s.docker.res.Container.ID, image, s.port, time.Since(begin).Round(time.Millisecond))
	return s, nil
}

func startContainer(ctx context.Context, pool *dockertest.Pool, repo, tag string, extra []string, logf func(string, ...any)) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := []string{"postgres"}
	for _, line := range baseConfLines(port, "/tmp") {
		if k, v, ok := strings.Cut(line, " = "); ok {
			cmd = append(cmd, "-c", k+"="+unquoteConf(v))
		}
	}
	for _, line := range extra {
		k, v, _ := strings.Cut(line, " = ")
		cmd = append(cmd, "-c", k+"="+unquoteConf(v))
	}
	res, err := pool.RunWithOptions(&dockertest.RunOptions{
		Repository: repo,
		Tag:        tag,
		Cmd:        cmd,
		// The official image refuses to start without a password unless
		// told to trust; PGPORT makes its init-time server and psql use
		// the same port as the real one.
		Env:    []string{"POSTGRES_HOST_AUTH_METHOD=trust", "PGPORT=" + strconv.Itoa(port)},
		Labels: map[string]string{dockerLabel: strconv.Itoa(os.Getpid())},
	}, func(hc *dc.HostConfig) {
		hc.NetworkMode = "host"
		hc.PublishAllPorts = false
		hc.AutoRemove = false // Restart stops and starts the same container
		// The default 64 MB /dev/shm is too small for parallel queries and
		// dynamic shared memory under a bench.
		hc.ShmSize = 512 << 20
	})
	if err != nil {
		return nil, fmt.Errorf("pglocal: docker run %s:%s: %w", repo, tag, err)
	}
	s := &Server{
		port:     port,
		adminURL: localURL(port, "postgres"),
		logf:     logf,
		docker:   &dockerServer{pool: pool, res: res, image: repo + ":" + tag},
	}
	// Removes the container if this process dies before Stop; it needs the
	// docker command, and without it only Stop removes the container.
	if docker, err := exec.LookPath("docker"); err == nil {
		s.wd, err = startDockerWatchdog(docker, res.Container.ID)
		if err != nil {
			s.Stop()
			return nil, err
		}
	}
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.readVersion(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// unquoteConf undoes confQuote: a command-line -c value is taken as is.
func unquoteConf(v string) string {
	if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
		v = v[1 : len(v)-1]
		v = strings.ReplaceAll(v, `''`, `'`)
		v = strings.ReplaceAll(v, `\\`, `\`)
	}
	return v
}

// waitReady waits until the container's server accepts a query on TCP, or
// the container exits, in which case its log says why.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dockerReadyTimeout)
	defer cancel()
	id := s.docker.res.Container.ID
	var lastErr error
	for {
		c, err := s.docker.pool.Client.InspectContainerWithContext(id, ctx)
		if err == nil && !c.State.Running {
			return fmt.Errorf("pglocal: container %.12s exited with %d before its server was ready; its log:\n%s",
				id, c.State.ExitCode, s.dockerLogs(50))
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(cctx, s.adminURL)
		if err == nil {
			err = conn.Ping(cctx)
			conn.Close(context.WithoutCancel(cctx))
		}
		ccancel()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("pglocal: container %.12s: server not ready: %w (last: %v); its log:\n%s",
				id, context.Cause(ctx), lastErr, s.dockerLogs(50))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dockerLogs returns the last n lines the container wrote.
func (s *Server) dockerLogs(n int) string {
	var buf bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.docker.pool.Client.Logs(dc.LogsOptions{
		Context: ctx, Container: s.docker.res.Container.ID,
		OutputStream: &buf, ErrorStream: &buf, Stdout: true, Stderr: true, Tail: strconv.Itoa(n),
	})
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	return buf.String()
}

// restartDocker stops the container's server ("fast": SIGINT, the
// official image's stop signal; "immediate": SIGQUIT, like a crash) and
// starts the same container again, with its data and port.
func (s *Server) restartDocker(ctx context.Context, mode string) error {
	cl := s.docker.pool.Client
	id := s.docker.res.Container.ID
	sig := dc.SIGINT
	if mode == "immediate" {
		sig = dc.SIGQUIT
	}
	if err := cl.KillContainer(dc.KillContainerOptions{ID: id, Signal: sig, Context: ctx}); err != nil {
		return fmt.Errorf("pglocal: signal container %.12s: %w", id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if _, err := cl.WaitContainerWithContext(id, wctx); err != nil {
		return fmt.Errorf("pglocal: wait for container %.12s to stop: %w", id, err)
	}
	if err := cl.StartContainerWithContext(id, nil, ctx); err != nil {
		return fmt.Errorf("pglocal: start container %.12s: %w", id, err)
	}
	return s.waitReady(ctx)
}

// stopDocker removes the container and its anonymous volumes.
func (s *Server) stopDocker() error {
	if err := s.docker.pool.Purge(s.docker.res); err != nil {
		var nf *dc.NoSuchContainer
		if !errors.As(err, &nf) {
			return fmt.Errorf("pglocal: remove container %.12s: %w", s.docker.res.Container.ID, err)
		}
	}
	return nil
}

// dockerWatchdogScript is watchdogScript for a container: on end of file it
// removes the container.
const dockerWatchdogScript = `trap '' INT HUP
read -r line
if [ "$line" != done ]; then
	"$1" rm -f -v "$2" >/dev/null 2>&1
fi`

func startDockerWatchdog(docker, id string) (*watchdog, error) {
	return startWatchdogScript(dockerWatchdogScript, nil, docker, id)
}

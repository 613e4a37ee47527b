package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"

	"github.com/spf13/pflag"

	"github.com/walhook/walhook"
	"github.com/walhook/walhook/cdc"
)

// usageError is a mistake in the command line; it exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, pflag.ErrHelp) {
		return 2
	}
	var se statusError
	if errors.As(err, &se) {
		return se.code
	}
	return 1
}

const usage = `walhook turns committed PostgreSQL row changes into webhooks.

Usage:
  walhook install   --database-url URL --config walhook.yaml [--dry-run]
  walhook run       --database-url URL --config walhook.yaml
  walhook check     --config walhook.yaml [--database-url URL]
  walhook status    --database-url URL [--json]   (exits 3, 4 or 5 on a problem)
  walhook backfill  --database-url URL --follow ID | --subscription UUID [--table T]... [--no-follow]
  walhook uninstall --database-url URL [--drop-schema]
  walhook demo      [--keep]
  walhook bench     [--database-url URL] [--rows N] [--rss-rows N] [--json]
  walhook version

Run "walhook COMMAND --help" for a command's flags. Every flag can also be set
as WALHOOK_<FLAG> (WALHOOK_DATABASE_URL, ...); DATABASE_URL is the fallback for
the database.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "install":
		return cmdInstall(ctx, rest, stdout, stderr)
	case "run":
		return cmdRun(ctx, rest, stdout, stderr)
	case "check":
		return cmdCheck(ctx, rest, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "backfill":
		return cmdBackfill(ctx, rest, stdout, stderr)
	case "uninstall":
		return cmdUninstall(ctx, rest, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, stdout, stderr)
	case "bench":
		return cmdBench(ctx, rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "walhook", walhook.Version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

// common holds the flags shared by the commands.
type common struct {
	DatabaseURL  string
	Config       string
	Slot         string
	Publication  string
	Listen       string
	LogFormat    string
	AllowHTTP    bool
	AllowPrivate bool
}

type flagSet struct {
	*pflag.FlagSet
	c *common
}

// newFlags makes the command's flag set with the named common flags.
func newFlags(name string, stderr io.Writer, c *common, which ...string) *flagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	for _, w := range which {
		switch w {
		case "database-url":
			fs.StringVar(&c.DatabaseURL, w, "", "PostgreSQL connection URL (env WALHOOK_DATABASE_URL, then DATABASE_URL)")
		case "config":
			fs.StringVar(&c.Config, w, "walhook.yaml", "config file")
		case "slot":
			fs.StringVar(&c.Slot, w, cdc.DefaultSlot, "replication slot name")
		case "publication":
			fs.StringVar(&c.Publication, w, cdc.DefaultPublication, "publication name")
		case "listen":
			fs.StringVar(&c.Listen, w, "127.0.0.1:9187", "address for metrics and health")
		case "log-format":
			fs.StringVar(&c.LogFormat, w, "text", "log format: text or json")
		case "allow-http":
			fs.BoolVar(&c.AllowHTTP, w, false, "allow http:// targets")
		case "allow-private-targets":
			fs.BoolVar(&c.AllowPrivate, w, false, "allow loopback, private and link-local destinations")
		}
	}
	return &flagSet{fs, c}
}

// parse parses args, then fills every flag not given from WALHOOK_<FLAG>.
func (fs *flagSet) parse(args []string, needDB bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	var envErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		env := "WALHOOK_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil && envErr == nil {
				envErr = usageError{fmt.Sprintf("%s: %v", env, err)}
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	if fs.Lookup("database-url") != nil && fs.c.DatabaseURL == "" {
		fs.c.DatabaseURL = os.Getenv("DATABASE_URL")
	}
	if needDB && fs.c.DatabaseURL == "" {
		return usageError{"no database: give --database-url, WALHOOK_DATABASE_URL or DATABASE_URL"}
	}
	for _, n := range []struct{ flag, value string }{{"slot", fs.c.Slot}, {"publication", fs.c.Publication}} {
		if fs.Lookup(n.flag) != nil && !nameRE.MatchString(n.value) {
			return usageError{fmt.Sprintf("--%s %q: want 1 to 63 lower-case letters, digits and _ (PostgreSQL's rule for slot names)", n.flag, n.value)}
		}
	}
	if f := fs.c.LogFormat; f != "" && f != "text" && f != "json" {
		return usageError{fmt.Sprintf("--log-format: %q is not text or json", f)}
	}
	return nil
}

// nameRE is what slot and publication names may be. PostgreSQL allows no
// more for slots; publications are held to the same so that the names can
// go into replication commands without quoting.
var nameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// quietLogger is the logger of demo and bench, whose own output is the
// point: silent unless LOG_LEVEL asks for logs.
func quietLogger(stderr io.Writer, format string) *slog.Logger {
	if os.Getenv("LOG_LEVEL") != "" {
		return newLogger(stderr, format)
	}
	return newLogger(io.Discard, format)
}

// newLogger builds the logger; LOG_LEVEL (debug, info, warn, error) sets the level.
func newLogger(w io.Writer, format string) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(os.Getenv("LOG_LEVEL"))); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook"
)

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("status", stderr, &c, "database-url", "slot")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := fs.parse(args, true); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, c.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := walhook.Status(ctx, conn, c.Slot)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return err
		}
	} else if err := printStatus(stdout, st); err != nil {
		return err
	}
	return statusProblem(st)
}

// Exit codes of walhook status for its problems, most serious first; 0 is
// all well, 1 a failure to find out, 2 a usage error.
const (
	exitNotInstalled = 3
	exitSlot         = 4 // missing or lost
	exitNoLeader     = 5
)

// statusError makes walhook status exit with code after printing the
// report.
type statusError struct {
	code int
	msg  string
}

func (e statusError) Error() string { return e.msg }

// statusProblem turns the report's most serious problem into its exit
// code and a line saying what to do.
func statusProblem(st *walhook.StatusReport) error {
	if len(st.Problems) == 0 {
		return nil
	}
	switch p := st.Problems[0]; p {
	case walhook.ProblemNotInstalled:
		return statusError{exitNotInstalled, "walhook is not installed in this database: run walhook install"}
	case walhook.ProblemSlotMissing:
		return statusError{exitSlot, "the replication slot does not exist: run walhook install to create it (changes made meanwhile are not sent)"}
	case walhook.ProblemSlotLost:
		return statusError{exitSlot, "the replication slot is lost (wal_status = lost): changes were missed; drop the slot and run walhook install to create it again"}
	case walhook.ProblemNoLeader:
		return statusError{exitNoLeader, "no walhook run leads: nothing is streaming; start walhook run"}
	default:
		return statusError{1, "problem: " + p}
	}
}

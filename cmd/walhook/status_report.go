package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/walhook/walhook"
)

// printStatus writes the report as aligned text.
func printStatus(w io.Writer, st *walhook.StatusReport) error {
	if !st.Installed {
		_, err := fmt.Fprintln(w, "walhook is not installed in this database (run walhook install)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "SCHEMA\tversion %d\n", st.SchemaVersion)
	if s := st.Slot; s != nil {
		state := "inactive"
		if s.Active {
			state = fmt.Sprintf("active (pid %d)", s.ActivePID)
		}
		fmt.Fprintf(tw, "SLOT\t%s  %s  confirmed %s  lag %s  retains %s", s.Name, state, s.ConfirmedLSN, byteSize(s.LagBytes), byteSize(s.RetainedBytes))
		if s.WALStatus != "" {
			fmt.Fprintf(tw, "  wal_status %s", s.WALStatus)
		}
		fmt.Fprintln(tw)
	} else {
		fmt.Fprintf(tw, "SLOT\t%s\n", st.SlotError)
	}
	if l := st.Leader; l != nil {
		fmt.Fprintf(tw, "LEADER\tpid %d", l.PID)
		if l.User != "" {
			fmt.Fprintf(tw, "  user %s", l.User)
		}
		if l.ClientAddr != "" {
			fmt.Fprintf(tw, "  from %s", l.ClientAddr)
		}
		if l.BackendStart != nil {
			fmt.Fprintf(tw, "  since %s", l.BackendStart.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(tw)
	} else {
		fmt.Fprintln(tw, "LEADER\tnone: no walhook run holds the leader lock")
	}
	sub := st.Subscriptions
	fmt.Fprintf(tw, "SUBSCRIPTIONS\tactive %d  inactive %d  suspended %d  gone %d\n", sub["active"], sub["inactive"], sub["suspended"], sub["gone"])
	d := st.Deliveries
	fmt.Fprintf(tw, "DELIVERIES\tqueued %d  due %d  leased %d  later %d  parked %d", d.Queued, d.Due, d.Leased, d.Later, d.Parked)
	if d.NextDueAt != nil {
		fmt.Fprintf(tw, "  next due %s", d.NextDueAt.UTC().Format(time.RFC3339))
	}
	fmt.Fprintln(tw)
	h := st.Held
	fmt.Fprintf(tw, "HELD\trule %d  payload %d  owners %d  schema %d", h["rule"], h["payload"], h["owners"], h["schema"])
	if h["rule"]+h["payload"]+h["owners"]+h["schema"] > 0 {
		fmt.Fprint(tw, "  (nothing is sent for them: fix the cause, then SELECT walhook.release_held())")
	}
	fmt.Fprintln(tw)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if err := printProcesses(w, st.Processes); err != nil {
		return err
	}
	if err := printStatic(w, st.Static); err != nil {
		return err
	}
	if err := printBackfills(w, st.Backfills); err != nil {
		return err
	}
	if len(st.RecentFailures) == 0 {
		_, err := fmt.Fprintln(w, "RECENT FAILURES: none")
		return err
	}
	fmt.Fprintln(w, "RECENT FAILURES")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TIME\tSUBSCRIPTION\tEVENT\tATTEMPT\tSTATUS\tERROR")
	for _, f := range st.RecentFailures {
		status := "-"
		if f.ResponseStatus != nil {
			status = fmt.Sprint(*f.ResponseStatus)
		}
		errText := strings.ReplaceAll(f.Error, "\n", " ")
		if len(errText) > 80 {
			errText = errText[:77] + "..."
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\n", f.At.UTC().Format(time.RFC3339), f.SubscriptionID, f.Event, f.Attempt, status, errText)
	}
	return tw.Flush()
}

// printProcesses lists the walhook processes and their last errors.
func printProcesses(w io.Writer, ps []walhook.ProcessStatus) error {
	if len(ps) == 0 {
		_, err := fmt.Fprintln(w, "PROCESSES: none reported in the last 30s")
		return err
	}
	fmt.Fprintln(w, "PROCESSES")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tROLE\tSTREAMING\tVERSION\tRESTARTS\tLAST ERROR")
	for _, p := range ps {
		last := "-"
		if p.LastError != "" && p.LastErrorAt != nil {
			last = p.LastErrorAt.UTC().Format(time.RFC3339) + " " + oneLine(p.LastError, 80)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%v\t%s\t%d\t%s\n", p.Name, p.Role, p.Streaming, p.Version, p.Restarts, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w)
	return err
}

// oneLine shortens s to one line of at most n characters.
func oneLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		s = s[:n-3] + "..."
	}
	return s
}

// printStatic lists the static subscriptions, when there are any.
func printStatic(w io.Writer, static []walhook.StaticStatus) error {
	if len(static) == 0 {
		return nil
	}
	fmt.Fprintln(w, "STATIC SUBSCRIPTIONS")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tID\tEVENTS\tTARGET\tOWNER\tSTATE")
	for _, s := range static {
		state := "active"
		if !s.Active {
			state = "inactive: " + s.StatusMessage
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.ID, strings.Join(s.Events, ","), s.TargetURL, s.Owner, state)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w)
	return err
}

// byteSize formats n bytes for people: 512 B, 1.5 kB, 16.0 MB.
func byteSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// printBackfills lists the backfills under way or recently finished;
// nothing when there are none.
func printBackfills(w io.Writer, bs []walhook.BackfillStatus) error {
	if len(bs) == 0 {
		return nil
	}
	fmt.Fprintln(w, "BACKFILLS")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tTABLE\tSUBSCRIPTION\tSTATUS\tROWS SENT\tESTIMATE\tERROR")
	for _, b := range bs {
		est := "?"
		if b.Estimate != nil {
			est = fmt.Sprint(*b.Estimate)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%d\t%s\t%s\n", b.ID, b.Table, b.SubscriptionID, b.Status, b.RowsSent, est, oneLine(b.Error, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w)
	return err
}

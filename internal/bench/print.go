package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Print writes the result as a table.
func (r *Result) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	m := r.Machine
	fmt.Fprintf(tw, "machine\t%d CPUs, %s, PostgreSQL %s\n", m.CPUs, m.GoVersion, m.PostgreSQL)
	keys := make([]string, 0, len(m.Settings))
	for k := range m.Settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var kv []string
	for _, k := range keys {
		kv = append(kv, k+"="+m.Settings[k])
	}
	fmt.Fprintf(tw, "settings\t%s\n", strings.Join(kv, " "))
	fmt.Fprintf(tw, "subscriptions\t%d\n", r.Subscriptions)
	if rc := r.Receiver; rc != nil {
		fmt.Fprintf(tw, "receiver\tseparate process, pid %d, exited %t\n", rc.PID, rc.Exited)
	}
	for _, h := range r.HTTP {
		fmt.Fprintf(tw, "HTTP limit, %s body, %d clients\t%.0f events/s\t%.0f requests/s, %d of %d bytes in %.2fs; CPU per request: client %.0f µs, receiver %.0f µs\n",
			h.Body, h.Clients, h.EventsPerSec, h.PerSec, h.Requests, h.BodyBytes, h.Seconds, h.ClientCPUPerRequest, h.ReceiverCPUPerRequest)
	}
	if r.HTTPLimit > 0 {
		fmt.Fprintf(tw, "HTTP limit (best)\t%.0f events/s\tone event per request\n", r.HTTPLimit)
	}
	if r.HTTPBatchLimit > 0 {
		fmt.Fprintf(tw, "HTTP limit, batches (best)\t%.0f events/s\n", r.HTTPBatchLimit)
	}
	printBacklog := func(prefix string, bl *backlogResult) {
		fmt.Fprintf(tw, "%sbacklog written\t%d rows in %d transactions\t%.1fs (%.0f rows/s), %.1f MB of WAL, %d xids\n",
			prefix, bl.Rows, bl.Transactions, bl.Seconds, bl.RowsPerSec, float64(bl.WALBytes)/1e6, bl.XIDs)
	}
	printDelivery := func(name string, d *deliveryResult) {
		share := ""
		if d.Limit > 0 {
			share = fmt.Sprintf(", %.0f%% of the lower limit %.0f/s", 100*d.Share, d.Limit)
		}
		fmt.Fprintf(tw, "%s\t%.0f deliveries/s\t%d in %d requests in %.2fs%s (first at %.2fs, acknowledged at %.2fs)\n",
			name, d.PerSec, d.Deliveries, d.Requests, d.Seconds, share, d.FirstSeconds, d.AckSeconds)
		if d.Retried > 0 {
			fmt.Fprintf(tw, "    retried\t%d deliveries\twaited in walhook.deliveries after a failed attempt\n", d.Retried)
		}
		if d.Duplicates > 0 {
			fmt.Fprintf(tw, "    duplicates\t%d events\tarrived again with a webhook-id already seen (at least once)\n", d.Duplicates)
		}
		fmt.Fprintf(tw, "    peak RSS (bench process)\t%.1f MiB\tGo heap in use peak %.1f MiB\n", d.PeakRSSMiB, d.GoHeapPeakMiB)
		pg := "n/a"
		if d.PostgresCPUPerDelivery > 0 {
			pg = fmt.Sprintf("%.0f µs", d.PostgresCPUPerDelivery)
		}
		fmt.Fprintf(tw, "    CPU per delivery\twalhook %.0f µs\tPostgreSQL %s, receiver %.0f µs\n", d.WalhookCPUPerDelivery, pg, d.ReceiverCPUPerDelivery)
	}
	for _, sh := range r.Shapes {
		fmt.Fprintf(tw, "transactions of %d rows\t\t\n", sh.TxSize)
		printBacklog("  ", sh.Backlog)
		if s := sh.Stream; s != nil {
			pg := ""
			if s.PostgresCPUPerRow > 0 {
				pg = fmt.Sprintf(", PostgreSQL CPU %.1f µs/row", s.PostgresCPUPerRow)
			}
			fmt.Fprintf(tw, "  stream limit (pg_recvlogical)\t%.0f rows/s\t%.2fs, %.1f MB/s of WAL%s\n", s.RowsPerSec, s.Seconds, s.MBPerSec, pg)
		}
		printDelivery("  catch-up (walhook)", sh.CatchUp)
		if sh.Batch != nil {
			printDelivery(fmt.Sprintf("  catch-up, batches of %d", r.Batch), sh.Batch)
		}
	}
	if r.Backlog != nil {
		printBacklog("", r.Backlog)
	}
	if r.SingleTx != nil {
		printDelivery("one transaction (walhook)", r.SingleTx)
	}
	if l := r.Latency; l != nil {
		fmt.Fprintf(tw, "latency at %d/s\tp50 %.1f ms  p95 %.1f ms  p99 %.1f ms  max %.1f ms\t%d committed (%.0f/s), %d delivered\n",
			l.Rate, l.P50ms, l.P95ms, l.P99ms, l.Maxms, l.Committed, l.AchievedRate, l.Delivered)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, g := range r.Goals {
		mark := "MET"
		if !g.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(w, "goal %-6s %s: want %s, got %s\n", mark, g.Goal, g.Want, g.Got)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// Package bench is `walhook bench`: it measures, in one run on one machine,
// how fast walhook catches up with a backlog against the limits around it
// (the stream's own rate through pg_recvlogical, and the HTTP limit of the
// receiver), the latency at a steady rate, peak memory, and CPU per
// delivery in walhook and in PostgreSQL. It runs walhook through the public
// API (walhook.New), as an embedding program would.
package bench

// Package deliver sends webhook requests and records every attempt.
//
// It holds the dialects (how an event becomes a body and headers), Standard
// Webhooks signing, an HTTP client that refuses what a webhook sender must not
// do (private destinations, redirects, unbounded reads), and the Worker that
// runs deliveries through bounded concurrency: at most max_in_flight requests
// in all and max_per_host to one destination.
//
// Invariants:
//   - A request's Done is called exactly once, and only after its outcome is
//     durably written to walhook.attempts; until then the transaction it
//     belongs to cannot be acknowledged on the slot. A write that fails is
//     retried, never dropped; on shutdown an unwritten outcome is left
//     unacknowledged, so the change is delivered again after restart.
//   - A batch request (a dialect's batch:) carries its members' Done: each is
//     called when the batch's outcome is written, never before. Events of a
//     batch are in submission order, and batches of one subscription enter
//     its destination's queue in the order of their first event.
//   - Secrets and signature headers are never logged nor stored.
package deliver

// Package walhook turns committed PostgreSQL row changes into webhooks.
//
// A Service tails a logical replication slot (pgoutput), maps each committed
// change of a mapped table to events (order.created, order.paid), finds the
// active subscriptions of each event at the row's site and its ancestors,
// checks per subscription owner whether the owner may see the row (CEL rules
// over the row and the owner's attributes), and delivers through bounded
// concurrency, recording every attempt. Subscriptions are managed by the
// application with SQL functions in schema walhook; Install creates that
// schema, the publication and the slot.
//
//	cfg, _ := mapping.Load("walhook.yaml")
//	walhook.Install(ctx, conn, cfg, walhook.InstallOptions{})
//	svc, _ := walhook.New(walhook.Config{DatabaseURL: dsn, Mapping: cfg}, logger)
//	go svc.Run(ctx)
//	...
//	svc.Stop(ctx) // stop reading, drain, acknowledge
//
// The stages of a run, each in its own package:
//
//	cdc      the slot: decoding, and the acknowledgement tracker
//	mapping  walhook.yaml, and change → events
//	acl      owner attributes and the per-table rules
//	deliver  dialects, signing, the HTTP client, the worker, the retry queue
//	         and the attempt history
//	schema   the SQL schema and its migrations
//
// This package wires them: the leader election (one process streams a slot;
// the others stand by and work the retry queue), the router (derive, match,
// judge, fan out), and the lifecycle.
//
// Invariants:
//   - The slot is acknowledged only up to a transaction whose every delivery
//     is sent, recorded as failed, or durably queued for a retry (see cdc).
//     Nothing committed is lost to kill -9, a restart, or a receiver outage.
//   - A stage that fails or panics stops the whole pipeline at once: the
//     panic becomes an error with its stack (logged once), readiness turns
//     503, the other stages are cancelled, and the pipeline starts again with
//     backoff from the slot's acknowledged position. The change being
//     handled was not acknowledged, so it is delivered after the restart.
//   - A graceful Stop stops reading, lets the attempts under way finish
//     within Config.ShutdownTimeout, records them and acknowledges the slot
//     as far as they got; StopAndCancel leaves them to be sent again.
//   - Every goroutine has an owner that waits for it; Run returns only when
//     all of them have ended.
//   - A backfill's chunk is routed by the consumer at its high watermark,
//     without the rows that changed in the stream since its low watermark
//     (backfill.go): no existing row is submitted after a newer event for
//     it. Its progress is recorded only once the chunk's deliveries are
//     sent or durably queued, and at most one chunk is in memory.
package walhook

// Package cdc reads committed row changes from a PostgreSQL logical replication
// slot (pgoutput) and decides how far the slot may be acknowledged. It knows
// nothing of HTTP: downstream work is tracked through Txn handles.
//
// The acknowledgement rule: transactions are tracked in commit order and
// resolved in any order; the slot's confirmed LSN is reported only up to the
// end of the newest transaction before which every transaction is resolved.
// A transaction is resolved when its consumer has sealed it (seen its commit
// and dispatched all its work) and every unit of work added to it is done
// (sent, durably queued, or recorded as failed). While no transaction is
// pending, a keepalive's WAL position is confirmed as well, so an idle slot,
// or one whose publication filters out every change, never pins WAL. The
// server's WAL end is never reported while anything is unresolved.
//
// The goroutine that owns the replication connection never blocks longer than
// the standby interval: when the consumer is slow it keeps sending status
// updates while it waits, so the server does not time the connection out.
//
// Column types that need the catalog to be encoded (domains, arrays of
// anything, composites) are looked up on a second, ordinary connection when
// a RELATION message arrives, before the changes that use it; a lookup is
// bounded by half the standby interval, and one that fails leaves the values
// as strings with a warning: it never stops the stream (types.go).
//
// A slot the server invalidated (wal_status lost, or an invalidation_reason
// on 17+) is never streamed from, retried or silently replaced: Slot,
// EnsureSlot and Stream.Run return *SlotLostError, which names the range that
// may have been missed and the recovery (RecreateSlot, then a backfill).
// EnsureSlot creates failover slots where the server has them (17+).
//
// The publication publishes partitions via their root
// (publish_via_partition_root): a partition's changes arrive under its
// partitioned table's relation. An UPDATE that moves a row to another
// partition arrives as a DELETE immediately followed by an INSERT in the same
// transaction, unmarked; the old row is marked with the root's replica
// identity but holds what the partition logged (the consumer in the root
// package pairs the two back into one update).
//
// The stream never starts from IDENTIFY_SYSTEM's position: it starts from the
// slot's confirmed_flush_lsn, which the server applies on its own.
package cdc

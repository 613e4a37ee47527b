package metrics

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric name.
const Namespace = "walhook"

// MaxDestinations is how many destinations the per-destination gauges name;
// the rest are summed under OtherDestination.
const MaxDestinations = 20

// OtherDestination labels the destinations beyond MaxDestinations.
const OtherDestination = "other"

// Delivery outcomes, the values of walhook_deliveries_total's outcome label.
const (
	OutcomeSucceeded   = "succeeded"
	OutcomeRetried     = "retried"
	OutcomeFailed      = "failed"
	OutcomeDeactivated = "deactivated"
)

// Hold causes, the values of walhook_held_total's cause label: why a
// delivery was held instead of sent.
const (
	HeldRule    = "rule"    // an acl rule or a derived event's condition failed to evaluate
	HeldPayload = "payload" // the table's payload expression failed
	HeldOwners  = "owners"  // owners.query failed
	HeldSchema  = "schema"  // the table no longer has a column the config names
)

// Backfill outcomes, the values of walhook_backfill_tables_finished_total's
// status label: how one table of a backfill ended in this process.
const (
	BackfillDone      = "done"
	BackfillFailed    = "failed"
	BackfillCancelled = "cancelled"
)

// Rule kinds, the values of walhook_rule_errors_total's kind label.
const (
	RuleACL   = "acl"
	RuleEvent = "event"
)

// LatencyBuckets are the delivery latency histogram's buckets, in seconds:
// from a fast local receiver to retries hours later.
var LatencyBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000}

// Destination is one destination's delivery load at a moment.
type Destination struct {
	Host     string // host:port
	InFlight int    // HTTP requests under way
	Queued   int    // waiting for one of the destination's places
}

// Metrics is one process's collectors. Its methods are safe for concurrent
// use.
type Metrics struct {
	// Registry holds every collector below, plus the Go runtime and process
	// collectors; serve it with promhttp.HandlerFor.
	Registry *prometheus.Registry

	LagBytes        prometheus.Gauge
	LagSeconds      prometheus.Gauge
	RetainedBytes   prometheus.Gauge
	PendingTxns     prometheus.Gauge
	ChangesDecoded  prometheus.Counter
	EventsProduced  prometheus.Counter
	Deliveries      *prometheus.CounterVec // outcome
	DeliveryLatency prometheus.Histogram
	ACLDenials      prometheus.Counter
	RuleErrors      *prometheus.CounterVec // kind
	OwnersLoaded    prometheus.Counter
	Held            *prometheus.CounterVec // cause
	// BackfillRows counts the deliveries of existing rows recorded, per
	// mapped table (bounded by the config).
	BackfillRows *prometheus.CounterVec // table
	// BackfillRunning is 1 while this process reads a backfill's table.
	BackfillRunning  prometheus.Gauge
	BackfillFinished *prometheus.CounterVec // status

	mu           sync.Mutex
	destinations func() []Destination            // guarded by mu; nil while no pipeline runs
	state        func() (leader, streaming bool) // guarded by mu; nil before SetState
}

// New creates the collectors and registers them on a new registry.
func New(version string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		LagBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "replication_lag_bytes",
			Help: "WAL between the server's current position and the slot's confirmed LSN (pg_current_wal_lsn() - confirmed_flush_lsn)."}),
		LagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "replication_lag_seconds",
			Help: "Seconds since the commit of the last acknowledged transaction while transactions wait for acknowledgement; 0 when everything received is acknowledged."}),
		RetainedBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "slot_retained_wal_bytes",
			Help: "WAL the replication slot keeps from being recycled (pg_current_wal_lsn() - restart_lsn)."}),
		PendingTxns: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "transactions_pending",
			Help: "Transactions received and not yet acknowledged."}),
		ChangesDecoded: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "changes_decoded_total",
			Help: "Row changes decoded from the replication stream."}),
		EventsProduced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "events_produced_total",
			Help: "Events (noun.verb and derived) produced from row changes, before matching subscriptions."}),
		Deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "deliveries_total",
			Help: "Delivery attempts recorded, by what they led to: succeeded, retried (queued for another attempt), failed (schedule used up) or deactivated (410 Gone)."},
			[]string{"outcome"}),
		DeliveryLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: "delivery_latency_seconds",
			Help: "From the commit of a change to the 2xx answer to it, retries included.", Buckets: LatencyBuckets}),
		ACLDenials: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "acl_denials_total",
			Help: "Matching subscriptions not sent an event because the acl rule denied their owner (or the owner does not exist)."}),
		RuleErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "rule_errors_total",
			Help: "Rule evaluations that failed: kind acl (counted as a denial) or event (a derived event's condition; not produced)."},
			[]string{"kind"}),
		OwnersLoaded: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "owners_loaded_total",
			Help: "Owners loaded with owners.query (cache misses)."}),
		Held: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "held_total",
			Help: "Deliveries held instead of sent because walhook could not judge or shape them, by cause: rule, payload, owners or schema. See walhook.held."},
			[]string{"cause"}),
		BackfillRows: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "backfill_rows_sent_total",
			Help: "Existing rows a backfill sent (delivered or durably queued), by mapped table; walhook.backfills has each backfill's progress."},
			[]string{"table"}),
		BackfillRunning: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "backfill_running",
			Help: "1 while this process reads a table of a backfill (one at a time)."}),
		BackfillFinished: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "backfill_tables_finished_total",
			Help: "Tables of backfills this process finished, by how: done, failed or cancelled."},
			[]string{"status"}),
	}
	for _, st := range []string{BackfillDone, BackfillFailed, BackfillCancelled} {
		m.BackfillFinished.WithLabelValues(st)
	}
	for _, c := range []string{HeldRule, HeldPayload, HeldOwners, HeldSchema} {
		m.Held.WithLabelValues(c)
	}
	for _, o := range []string{OutcomeSucceeded, OutcomeRetried, OutcomeFailed, OutcomeDeactivated} {
		m.Deliveries.WithLabelValues(o)
	}
	for _, k := range []string{RuleACL, RuleEvent} {
		m.RuleErrors.WithLabelValues(k)
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "build_info",
		Help: "Always 1; the version label says which walhook runs.", ConstLabels: prometheus.Labels{"version": version}})
	build.Set(1)
	leader := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: "leader",
		Help: "1 while this process holds the slot's leader lock."}, func() float64 {
		l, _ := m.currentState()
		return b2f(l)
	})
	streaming := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: "streaming",
		Help: "1 while this process's pipeline streams from the slot."}, func() float64 {
		_, s := m.currentState()
		return b2f(s)
	})
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		build, leader, streaming,
		m.LagBytes, m.LagSeconds, m.RetainedBytes, m.PendingTxns,
		m.ChangesDecoded, m.EventsProduced,
		m.Deliveries, m.DeliveryLatency,
		m.ACLDenials, m.RuleErrors, m.OwnersLoaded, m.Held,
		m.BackfillRows, m.BackfillRunning, m.BackfillFinished,
		&destinationCollector{m: m},
	)
	return m
}

// SetDestinations sets the function the per-destination gauges read at each
// scrape; nil (no pipeline running) reports no destinations.
func (m *Metrics) SetDestinations(fn func() []Destination) {
	m.mu.Lock()
	m.destinations = fn
	m.mu.Unlock()
}

// SetState sets the function walhook_leader and walhook_streaming read.
func (m *Metrics) SetState(fn func() (leader, streaming bool)) {
	m.mu.Lock()
	m.state = fn
	m.mu.Unlock()
}

func (m *Metrics) currentState() (leader, streaming bool) {
	m.mu.Lock()
	fn := m.state
	m.mu.Unlock()
	if fn == nil {
		return false, false
	}
	return fn()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Decoded counts n decoded row changes (cdc.Observer).
func (m *Metrics) Decoded(n int) { m.ChangesDecoded.Add(float64(n)) }

// Recorded counts a recorded attempt by outcome (deliver.Observer).
func (m *Metrics) Recorded(outcome string) { m.Deliveries.WithLabelValues(outcome).Inc() }

// Latency observes commit→2xx (deliver.Observer).
func (m *Metrics) Latency(d time.Duration) { m.DeliveryLatency.Observe(d.Seconds()) }

// destinationCollector reports the per-destination gauges from a snapshot
// taken at scrape time, so a destination that went idle disappears instead of
// leaving a stale series behind.
type destinationCollector struct{ m *Metrics }

var (
	inFlightDesc = prometheus.NewDesc(Namespace+"_deliveries_in_flight",
		"HTTP requests under way, by destination (host:port; the busiest are named, the rest are \"other\").", []string{"host"}, nil)
	queuedDesc = prometheus.NewDesc(Namespace+"_deliveries_queued",
		"Deliveries waiting in memory for a place at their destination, by destination (host:port; the busiest are named, the rest are \"other\").", []string{"host"}, nil)
)

func (c *destinationCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inFlightDesc
	ch <- queuedDesc
}

func (c *destinationCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.Lock()
	fn := c.m.destinations
	c.m.mu.Unlock()
	if fn == nil {
		return
	}
	for _, d := range Top(fn(), MaxDestinations) {
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(d.InFlight), d.Host)
		ch <- prometheus.MustNewConstMetric(queuedDesc, prometheus.GaugeValue, float64(d.Queued), d.Host)
	}
}

// Top returns the n busiest destinations (in flight plus queued) and, when
// there are more, one OtherDestination entry summing the rest. It reorders ds.
func Top(ds []Destination, n int) []Destination {
	if len(ds) <= n {
		return ds
	}
	slices.SortFunc(ds, func(a, b Destination) int {
		if c := cmp.Compare(b.InFlight+b.Queued, a.InFlight+a.Queued); c != 0 {
			return c
		}
		return cmp.Compare(a.Host, b.Host)
	})
	other := Destination{Host: OtherDestination}
	for _, d := range ds[n:] {
		other.InFlight += d.InFlight
		other.Queued += d.Queued
	}
	return append(ds[:n:n], other)
}

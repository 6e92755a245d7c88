//! The router's metrics in the OpenMetrics text format (what Prometheus scrapes), written
//! without a dependency.

use std::fmt::{self, Write};

use super::fleet::Health;
use super::metrics::Metrics;

/// The `Content-Type` of [`Metrics::to_openmetrics`]'s text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Writes one metric family at a time: its `# TYPE` and `# HELP` lines, then its samples.
struct Exposition<'a, W> {
    out: &'a mut W,
}

impl<W: Write> Exposition<'_, W> {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> fmt::Result {
        writeln!(self.out, "# TYPE mcp_affinity_{name} {kind}")?;
        write!(self.out, "# HELP mcp_affinity_{name} ")?;
        for c in help.chars() {
            match c {
                '\\' => self.out.write_str("\\\\")?,
                '\n' => self.out.write_str("\\n")?,
                c => self.out.write_char(c)?,
            }
        }
        self.out.write_char('\n')
    }

    /// A sample: `mcp_affinity_{name}{suffix}{labels} value`.
    fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl fmt::Display,
    ) -> fmt::Result {
        write!(self.out, "mcp_affinity_{name}{suffix}")?;
        if !labels.is_empty() {
            self.out.write_char('{')?;
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.write_char(',')?;
                }
                write!(self.out, "{label}=\"")?;
                escape_label(self.out, value)?;
                self.out.write_char('"')?;
            }
            self.out.write_char('}')?;
        }
        writeln!(self.out, " {value}")
    }

    /// A counter family with one unlabelled sample.
    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(name, "counter", help)?;
        self.sample(name, "_total", &[], value)
    }

    /// A counter family with one sample per value of `label`.
    fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) -> fmt::Result {
        self.family(name, "counter", help)?;
        for (value_of_label, value) in values {
            self.sample(name, "_total", &[(label, value_of_label)], value)?;
        }
        Ok(())
    }

    /// A gauge family with one unlabelled sample.
    fn gauge(&mut self, name: &str, help: &str, value: impl fmt::Display) -> fmt::Result {
        self.family(name, "gauge", help)?;
        self.sample(name, "", &[], value)
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(out: &mut impl Write, value: &str) -> fmt::Result {
    for c in value.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

impl Metrics {
    /// The metrics in the OpenMetrics text format, served with
    /// [`OPENMETRICS_CONTENT_TYPE`]: see [`write_openmetrics`](Metrics::write_openmetrics).
    pub fn to_openmetrics(&self) -> String {
        let mut out = String::with_capacity(4096 + 512 * self.backends.len());
        self.write_openmetrics(&mut out)
            .expect("writing to a String does not fail");
        out
    }

    /// Writes the metrics in the OpenMetrics 1.0 text format: a `# TYPE` and `# HELP` line
    /// for every family (all named `mcp_affinity_…`), counters with the `_total` suffix
    /// (decisions, rejections by `reason`, keys by `fate`, store and token counts), gauges for
    /// the table's occupancy, the store's write queue and each backend (its `sessions`, its
    /// `weight`, whether it is `ready` and `draining`), the backends' health as a state set,
    /// label values escaped, and the closing `# EOF`. Backends are labelled by `backend`
    /// (the fleet-wide name), `id`, `tenant` and `label`.
    pub fn write_openmetrics(&self, out: &mut impl Write) -> fmt::Result {
        let mut x = Exposition { out };
        x.counters(
            "decisions",
            "Routing decisions, by decision: pinned to their key's owner, placed by the placement policy (or the affinity cookie), or rejected (a request placed again after a failed delivery, or whose answer was replaced by a rejection, counts once more).",
            "decision",
            &[
                ("pinned", self.pinned),
                ("placed", self.placed),
                ("rejected", self.rejected_total()),
            ],
        )?;
        x.counters(
            "rejections",
            "Requests rejected, by reason.",
            "reason",
            &self.rejected,
        )?;
        x.counter(
            "keys_learned",
            "Keys learned from backend responses (and operator keys bound on a 2xx answer).",
            self.keys_learned,
        )?;
        x.counters(
            "keys_ended",
            "Keys that left the table, by fate: forgotten (DELETE, a vouched 404, an operator's eviction), expired (idle), revoked (drain deadline), purged (owner removed, restarted or down), evicted (table full), released (legacy SSE stream ended).",
            "fate",
            &[
                ("forgotten", self.keys_forgotten),
                ("expired", self.keys_expired),
                ("revoked", self.keys_revoked),
                ("purged", self.keys_purged),
                ("evicted", self.keys_evicted),
                ("released", self.keys_released),
            ],
        )?;
        x.counter(
            "keys_lost",
            "Keys whose owner went down: sessions that died with their backend's process.",
            self.keys_lost,
        )?;
        x.counter(
            "key_conflicts",
            "New keys a backend minted that another backend already owned (refused).",
            self.key_conflicts,
        )?;
        x.counter(
            "keys_unlearned",
            "Keys a backend revealed that could not be stored (unroutable, table full).",
            self.keys_unlearned,
        )?;
        x.counter(
            "id_mismatches",
            "Answers to a keyed request that carried another session id (not learned).",
            self.id_mismatches,
        )?;
        x.counter(
            "bodies_observed",
            "Response bodies observed for a key.",
            self.bodies_observed,
        )?;
        x.counter(
            "observe_limit_hits",
            "Observations stopped at the byte bound before finding a key.",
            self.observe_limit_hits,
        )?;
        x.counter(
            "bodies_encoded",
            "Bodies that would have been observed but were content-encoded.",
            self.bodies_encoded,
        )?;
        x.counter(
            "vetoes",
            "Placement choices the embedder vetoed.",
            self.vetoes,
        )?;
        x.counter(
            "owners_down",
            "Times a backend was declared down.",
            self.owners_down,
        )?;
        x.counter(
            "placements_retried",
            "Requests placed again on another backend after a failed delivery.",
            self.placements_retried,
        )?;
        x.counters(
            "store_lookups",
            "Presented keys looked up in the shared store, by result.",
            "result",
            &[
                ("found", self.store_found),
                ("unavailable", self.store_unavailable),
                (
                    "other",
                    self.store_lookups
                        .saturating_sub(self.store_found + self.store_unavailable),
                ),
            ],
        )?;
        x.counter(
            "store_writes_dropped",
            "Shared-store writes dropped because the write queue was full.",
            self.store_writes_dropped,
        )?;
        x.counter(
            "store_operator_binds_refused",
            "Operator keys bound in this router only, past the store's operator-key budget.",
            self.store_operator_binds_refused,
        )?;
        x.counter(
            "store_restarts",
            "Times the shared store came back empty (a warm-up followed).",
            self.store_restarts,
        )?;
        x.counter(
            "store_lost_ignored",
            "Lost records ignored: dated beyond this router's clock plus the skew.",
            self.store_lost_ignored,
        )?;
        x.counter(
            "store_adopted",
            "Keys another router bound first, whose owner this router adopted.",
            self.store_adopted,
        )?;
        x.gauge(
            "store_queue",
            "Shared-store writes waiting for the embedder.",
            self.store_queue,
        )?;
        x.counter(
            "tokens_sealed",
            "Session ids sealed into tokens.",
            self.tokens_sealed,
        )?;
        x.counter(
            "tokens_opened",
            "Requests routed by a token that opened.",
            self.tokens_opened,
        )?;
        x.counters(
            "tokens_refused",
            "Presented tokens refused, by cause.",
            "cause",
            &self.tokens_refused,
        )?;
        x.gauge(
            "table_entries",
            "Keys in the session table.",
            self.table.len,
        )?;
        if let Some(capacity) = self.table.capacity {
            x.gauge(
                "table_capacity",
                "The most keys the session table holds.",
                capacity,
            )?;
        }
        self.write_backends(&mut x)?;
        x.out.write_str("# EOF\n")
    }

    fn write_backends<W: Write>(&self, x: &mut Exposition<'_, W>) -> fmt::Result {
        // Each backend's labels: its name, id, tenant and label.
        let labels: Vec<[String; 2]> = self
            .backends
            .iter()
            .map(|b| [b.id.to_string(), b.tenant.get().to_string()])
            .collect();
        fn each<'a>(
            b: &'a super::BackendInfo,
            [id, tenant]: &'a [String; 2],
        ) -> [(&'static str, &'a str); 4] {
            [
                ("backend", &b.name),
                ("id", id),
                ("tenant", tenant),
                ("label", &b.label),
            ]
        }
        type Field = fn(&super::BackendInfo) -> u64;
        let gauges: [(&str, &str, Field); 4] = [
            (
                "backend_sessions",
                "Keys a backend owns in the session table.",
                |b| b.sessions as u64,
            ),
            ("backend_weight", "A backend's placement weight.", |b| {
                u64::from(b.weight)
            }),
            (
                "backend_ready",
                "1 if a backend takes new conversations (healthy, not draining, weighted).",
                |b| u64::from(b.ready()),
            ),
            (
                "backend_draining",
                "1 if a backend is draining: it keeps its keys and gets nothing new.",
                |b| u64::from(b.draining),
            ),
        ];
        for (name, help, field) in gauges {
            x.family(name, "gauge", help)?;
            for (backend, labels) in self.backends.iter().zip(&labels) {
                x.sample(name, "", &each(backend, labels), field(backend))?;
            }
        }
        let name = "backend_health";
        x.family(
            name,
            "stateset",
            "A backend's health: healthy, unhealthy (failing checks: keeps its sessions, gets nothing new) or down (refusing connections: its sessions are gone).",
        )?;
        for (backend, labels) in self.backends.iter().zip(&labels) {
            for (state, health) in [
                ("healthy", Health::Healthy),
                ("unhealthy", Health::Unhealthy),
                ("down", Health::Down),
            ] {
                let mut with_state = each(backend, labels).to_vec();
                with_state.push(("mcp_affinity_backend_health", state));
                x.sample(name, "", &with_state, u64::from(backend.health == health))?;
            }
        }
        Ok(())
    }
}

//! The OpenMetrics exposition, read back by a real parser: the Python `prometheus_client`
//! OpenMetrics parser (installed by `tests/e2e/setup.sh`), which rejects anything that breaks
//! the format (a sample without its family, a counter without `_total`, a bad escape, a
//! missing `# EOF`).

#![allow(clippy::disallowed_methods)] // tests may read the clock; the crate may not

mod e2e;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use mcp_affinity::TenantId;
use mcp_affinity::router::{NewBackend, OPENMETRICS_CONTENT_TYPE, Probe, Routed, Router};
use serde_json::Value;

/// Parses `text` with `prometheus_client` and returns its families as JSON:
/// `[{"name", "type", "help", "samples": [[name, labels, value]]}]`.
fn parse(text: &str) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type, "help": f.documentation,
     "samples": [[s.name, s.labels, s.value] for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;
    let mut child = Command::new(e2e::python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition:\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

/// The value of the sample `name` whose labels include `labels`.
fn value(families: &[Value], family_name: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = family(families, family_name);
    f["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k].as_str() == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {f}"))[2]
        .as_f64()
        .unwrap()
}

#[test]
fn the_exposition_parses_and_says_what_the_router_counted() {
    let router = Router::builder().build();
    let now = Instant::now();
    // A name that needs every escape a label value has.
    let odd = "we\"ird\\name\nx";
    let a = router
        .add(NewBackend::new(TenantId::DEFAULT, "http://127.0.0.1:1").name(odd))
        .unwrap();
    let b = router
        .add(NewBackend::new(TenantId::new(7), "http://127.0.0.1:2"))
        .unwrap();
    let (initialize, _) = http::Request::post("/mcp").body(()).unwrap().into_parts();
    let Routed::Forward(mut exchange) = router.route(&initialize, now) else {
        panic!("placed")
    };
    let (mut head, _) = http::Response::builder()
        .header("mcp-session-id", "s1")
        .body(())
        .unwrap()
        .into_parts();
    let _ = router.on_response_head(&mut exchange, &mut head, now);
    router.on_exchange_end(exchange, mcp_affinity::router::End::Completed, now);
    let (stranger, _) = http::Request::post("/mcp")
        .header("mcp-session-id", "nobody")
        .body(())
        .unwrap()
        .into_parts();
    assert!(matches!(router.route(&stranger, now), Routed::Reject(_)));
    for _ in 0..3 {
        let _ = router.report_health(b, Probe::Refused, now);
    }

    let m = router.metrics();
    let text = m.to_openmetrics();
    assert!(text.ends_with("# EOF\n"));
    assert!(OPENMETRICS_CONTENT_TYPE.starts_with("application/openmetrics-text; version=1.0.0"));
    let families = parse(&text);

    // Every family is typed and documented.
    for f in &families {
        assert!(f["help"].as_str().is_some_and(|h| !h.is_empty()), "{f}");
        assert_ne!(f["type"], "unknown", "{f}");
    }
    let decisions = |d| {
        value(
            &families,
            "mcp_affinity_decisions",
            "mcp_affinity_decisions_total",
            &[("decision", d)],
        )
    };
    assert_eq!(decisions("placed"), 1.0);
    assert_eq!(decisions("rejected"), 1.0);
    assert_eq!(decisions("pinned"), 0.0);
    assert_eq!(
        family(&families, "mcp_affinity_rejections")["type"],
        "counter"
    );
    assert_eq!(
        value(
            &families,
            "mcp_affinity_rejections",
            "mcp_affinity_rejections_total",
            &[("reason", "unknown_key")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &families,
            "mcp_affinity_keys_learned",
            "mcp_affinity_keys_learned_total",
            &[]
        ),
        1.0
    );
    assert_eq!(
        value(
            &families,
            "mcp_affinity_table_entries",
            "mcp_affinity_table_entries",
            &[]
        ),
        m.table.len as f64
    );
    // The escaped name comes back as it was.
    assert_eq!(
        value(
            &families,
            "mcp_affinity_backend_sessions",
            "mcp_affinity_backend_sessions",
            &[("backend", odd)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &families,
            "mcp_affinity_backend_ready",
            "mcp_affinity_backend_ready",
            &[("id", &a.to_string())]
        ),
        1.0
    );
    // Health is a state set: exactly one state is 1 for each backend.
    assert_eq!(
        family(&families, "mcp_affinity_backend_health")["type"],
        "stateset"
    );
    let health = |id: &str, state| {
        value(
            &families,
            "mcp_affinity_backend_health",
            "mcp_affinity_backend_health",
            &[("id", id), ("mcp_affinity_backend_health", state)],
        )
    };
    assert_eq!(health(&b.to_string(), "down"), 1.0);
    assert_eq!(health(&b.to_string(), "healthy"), 0.0);
    assert_eq!(health(&a.to_string(), "healthy"), 1.0);
    assert_eq!(
        value(
            &families,
            "mcp_affinity_backend_ready",
            "mcp_affinity_backend_ready",
            &[("tenant", "7")]
        ),
        0.0
    );
}

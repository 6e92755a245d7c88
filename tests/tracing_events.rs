//! The `tracing` events an operator sees: keys learned and ended, rejections with their
//! reason and tenant, and backend changes, each at the level it deserves.
#![cfg(feature = "tracing")]

mod common;

use common::recorder::{Recorded, Recorder};
use common::*;
use mcp_affinity::TenantId;
use mcp_affinity::router::{Probe, Router};
use tracing::Level;

fn find<'a>(events: &'a [Recorded], message: &str) -> &'a Recorded {
    events
        .iter()
        .find(|e| e.message.starts_with(message))
        .unwrap_or_else(|| panic!("no event {message:?} in {events:#?}"))
}

#[test]
fn keys_rejections_and_backend_changes_are_events_at_their_levels() {
    let recorder = Recorder::new(Level::DEBUG);
    let events = tracing::subscriber::with_default(recorder.clone(), || {
        let router = Router::builder().build();
        let a = router
            .add_backend(TenantId::DEFAULT, "http://a", 1)
            .unwrap();
        let b = router
            .add_backend(TenantId::DEFAULT, "http://b", 1)
            .unwrap();
        let mut clock = Clock::new();
        let owner = initialize(&router, "s1", clock.now());
        let _ = rejected(router.route(
            &post("/mcp", &[("mcp-session-id", "nope"), LEGACY]),
            clock.now(),
        ));
        let _ = exchange(
            &router,
            &delete("/mcp", &[("mcp-session-id", "s1")]),
            200,
            &[],
            &[],
            clock.now(),
        );
        router.drain_backend(a, None, clock.now()).unwrap();
        router.undrain_backend(a, clock.now()).unwrap();
        let now = clock.advance(std::time::Duration::from_secs(1));
        for _ in 0..5 {
            let _ = router.report_health(b, Probe::Refused, now);
        }
        router.remove_backend(a, now).unwrap();
        let _ = rejected(router.route(&post("/mcp", &[]), now));
        let _ = owner;
        recorder.take()
    });

    let added = find(&events, "backend added");
    assert_eq!(added.level, Level::INFO);
    assert!(added.fields.contains("label=http://a"), "{added:?}");
    let learned = find(&events, "key learned");
    assert_eq!(learned.level, Level::DEBUG);
    assert!(learned.fields.contains("kind=session"), "{learned:?}");
    assert!(
        !learned.fields.contains("s1"),
        "ids are not logged: {learned:?}"
    );
    let unknown = find(&events, "request rejected");
    assert_eq!(unknown.level, Level::DEBUG);
    assert!(unknown.fields.contains("reason=unknown_key"), "{unknown:?}");
    assert!(unknown.fields.contains("status=404"), "{unknown:?}");
    assert!(unknown.fields.contains("tenant=0"), "{unknown:?}");
    assert_eq!(find(&events, "key forgotten").level, Level::DEBUG);
    assert_eq!(find(&events, "backend draining").level, Level::INFO);
    assert_eq!(find(&events, "backend ready again").level, Level::INFO);
    assert_eq!(find(&events, "backend down").level, Level::WARN);
    assert_eq!(find(&events, "backend removed").level, Level::INFO);
    // Nothing is ready any more: an operator must act, so it is a warning.
    let none_ready = events
        .iter()
        .find(|e| e.fields.contains("reason=no_ready_backend"))
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(none_ready.level, Level::WARN);
}

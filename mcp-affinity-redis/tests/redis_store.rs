//! The adapter against a real `redis-server` (each test starts its own on a free port of
//! 127.0.0.1, and kills it at the end): the protocol's commands, fleets of routers sharing
//! what they learn, and the outage policy under faults (paused, killed, restarted empty,
//! connections killed).
//!
//! Without `redis-server` these tests fail (never skip), saying how to install it.
#![allow(clippy::disallowed_methods)] // tests own the clock

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use mcp_affinity::router::store::StoreWrite;
use mcp_affinity::router::{End, How, Reason, Routed, Router, key_fn};
use mcp_affinity::table::KeyKind;
use mcp_affinity_redis::{Answer, Circuit, RedisStore, RedisStoreConfig, Unavailable};

const MINUTE: Duration = Duration::from_secs(60);

fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut server.admin())
        .unwrap()
}

// --- The protocol's commands ---------------------------------------------------------------

#[tokio::test]
async fn writes_are_bind_if_absent_refresh_fenced_forget_and_keep_greatest() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), fast_config())
        .await
        .unwrap();
    let bind = |value: &str| StoreWrite::Bind {
        key: "t:b:0:2:s1".into(),
        value: value.into(),
        ttl: MINUTE,
    };
    let mine = "1:00000000000000aa:0:1795000000:-";
    let theirs = "1:00000000000000bb:0:1795000001:-";

    // Bind: set if absent, with its TTL.
    let done = store.perform(&[bind(mine)]).await.unwrap();
    assert_eq!((done.written, done.taken.len()), (1, 0));
    assert_eq!(server.get("t:b:0:2:s1").as_deref(), Some(mine));
    assert!((59_000..=60_000).contains(&pttl(&server, "t:b:0:2:s1")));
    // Bound already: nothing is overwritten, and the value found is reported.
    let done = store.perform(&[bind(theirs)]).await.unwrap();
    assert_eq!(done.taken, vec![("t:b:0:2:s1".into(), mine.into())]);
    assert_eq!(server.get("t:b:0:2:s1").as_deref(), Some(mine));
    // The same bind sent again (a batch whose answer was lost) is done, not taken.
    let done = store.perform(&[bind(mine)]).await.unwrap();
    assert_eq!((done.written, done.taken.len()), (1, 0));

    // Refresh: the TTL starts over; a missing key stays missing.
    let _: () = redis::cmd("PEXPIRE")
        .arg("t:b:0:2:s1")
        .arg(5_000)
        .query(&mut server.admin())
        .unwrap();
    let refresh = |key: &str, value: &str| StoreWrite::Refresh {
        key: key.into(),
        value: value.into(),
        ttl: MINUTE,
    };
    // Refresh: a binding there gets its life back, value untouched; one that is gone is
    // written again (a router that routes a key keeps it in the store).
    store
        .perform(&[refresh("t:b:0:2:s1", theirs), refresh("t:b:0:1:gone", mine)])
        .await
        .unwrap();
    assert!(pttl(&server, "t:b:0:2:s1") > 59_000);
    assert_eq!(server.get("t:b:0:2:s1").as_deref(), Some(mine));
    assert_eq!(server.get("t:b:0:1:gone").as_deref(), Some(mine));
    assert!(pttl(&server, "t:b:0:1:gone") > 59_000);

    // Forget: only the owner the value names deletes it.
    let forget = |owner: &str| StoreWrite::Forget {
        key: "t:b:0:2:s1".into(),
        owner: owner.into(),
    };
    let done = store
        .perform(&[forget("1:00000000000000bb:0:")])
        .await
        .unwrap();
    assert_eq!(done.written, 1);
    assert_eq!(
        server.get("t:b:0:2:s1").as_deref(),
        Some(mine),
        "not ours: kept"
    );
    // Another incarnation of the same owner is another owner.
    store
        .perform(&[forget("1:00000000000000aa:1:")])
        .await
        .unwrap();
    assert_eq!(server.get("t:b:0:2:s1").as_deref(), Some(mine));
    store
        .perform(&[forget("1:00000000000000aa:0:")])
        .await
        .unwrap();
    assert_eq!(server.get("t:b:0:2:s1"), None, "ours: deleted");

    // Lost: the greatest record is kept, with the TTL of the write that set it.
    let lost = |before: u32| StoreWrite::Lost {
        key: "t:lost:0:00000000000000aa".into(),
        before,
        ttl: MINUTE,
    };
    store.perform(&[lost(100)]).await.unwrap();
    store.perform(&[lost(50)]).await.unwrap();
    assert_eq!(
        server.get("t:lost:0:00000000000000aa").as_deref(),
        Some("100")
    );
    store.perform(&[lost(200)]).await.unwrap();
    assert_eq!(
        server.get("t:lost:0:00000000000000aa").as_deref(),
        Some("200")
    );
    assert!(pttl(&server, "t:lost:0:00000000000000aa") > 59_000);

    // Lookups: found, missing.
    store.perform(&[bind(mine)]).await.unwrap();
    assert_eq!(store.lookup("t:b:0:2:s1").await, Answer::Found(mine.into()));
    assert_eq!(store.lookup("t:b:0:1:nobody").await, Answer::Missing);

    // A server that forgot the scripts (a restart) gets them again, and the write is done.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut server.admin())
        .unwrap();
    let done = store
        .perform(&[lost(300), forget("1:00000000000000aa:0:")])
        .await
        .unwrap();
    assert_eq!(done.written, 2);
    assert_eq!(
        server.get("t:lost:0:00000000000000aa").as_deref(),
        Some("300")
    );
    assert_eq!(server.get("t:b:0:2:s1"), None);

    // A key of another type: the server's error refuses that write alone, and a lookup of it
    // is unavailable (503), never a guess; the server answered, so the circuit stays closed.
    let _: () = redis::cmd("HSET")
        .arg("t:b:0:1:hash")
        .arg("f")
        .arg("v")
        .query(&mut server.admin())
        .unwrap();
    let wrong = StoreWrite::Bind {
        key: "t:b:0:1:hash".into(),
        value: mine.into(),
        ttl: MINUTE,
    };
    let done = store.perform(&[wrong, bind(mine)]).await.unwrap();
    assert_eq!((done.written, done.refused), (1, 1));
    assert_eq!(
        store.lookup("t:b:0:1:hash").await,
        Answer::Unavailable(Unavailable::Server)
    );
    let m = store.metrics();
    assert_eq!(m.circuit, Circuit::Closed);
    assert_eq!(m.errors.server, 2);
    assert_eq!((m.lookups, m.found, m.missing, m.unavailable), (3, 1, 1, 1));
    assert_eq!(m.lookup_latency.count(), 3);
    assert!(m.lookup_latency.quantile(0.99).unwrap() < Duration::from_millis(150));
}

#[tokio::test]
async fn connect_fails_fast_on_a_bad_url_or_a_closed_port() {
    assert!(matches!(
        RedisStore::connect("http://x", RedisStoreConfig::new()).await,
        Err(mcp_affinity_redis::Error::InvalidUrl(_))
    ));
    // A port nothing listens on (bound and released a moment ago).
    let port = free_port();
    let start = Instant::now();
    let config = RedisStoreConfig::new().connect_timeout(Duration::from_millis(300));
    let result = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), config).await;
    assert!(matches!(result, Err(mcp_affinity_redis::Error::Connect(_))));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

// --- Fleets ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_learned_by_one_router_is_routed_by_another_and_cached_there() {
    let server = RedisServer::start();
    let a = Member::join(&server, Router::builder(), &["x", "y", "z"]).await;
    let b = Member::join(&server, Router::builder(), &["z", "y", "x"]).await;
    let owner = initialize(&a.router, "s1");
    a.synced().await;
    let exchange = forward(b.route(&session("s1")).await);
    assert_eq!(exchange.how(), How::Pinned);
    assert_eq!(b.name_of(exchange.backend()), a.name_of(owner));
    b.router.on_exchange_end(
        exchange,
        mcp_affinity::router::End::Completed,
        Instant::now(),
    );
    // Cached: the next request is a local hit, with no lookup.
    assert!(matches!(
        b.router.route(&session("s1"), Instant::now()),
        Routed::Forward(_)
    ));
    // A session nobody learned is unknown everywhere: 404, never a guess.
    let rejection = rejected(b.route(&session("nobody")).await);
    assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    let m = b.store.metrics();
    assert_eq!((m.lookups, m.found, m.missing), (2, 1, 1));
    assert_eq!(server.keys("t:b:*"), vec![binding_key("s1")], "one binding");
    a.leave().await;
    b.leave().await;
}

/// Something else writes under the prefix: a hash where the restart marker lives. Each poll
/// is answered with an error (counted), and the router's writes reach the store all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_at_the_restart_marker_does_not_stop_the_writes() {
    let server = RedisServer::start();
    let _: () = redis::cmd("HSET")
        .arg(format!("{PREFIX}:epoch"))
        .arg("x")
        .arg("y")
        .query(&mut server.admin())
        .unwrap();
    let a = Member::join(&server, Router::builder(), &["x", "y"]).await;
    initialize(&a.router, "s1");
    a.synced().await;
    assert_eq!(server.keys("t:b:*"), vec![binding_key("s1")]);
    let m = a.store.metrics();
    assert!(m.poll_errors >= 1, "{m:?}");
    // The rest of each poll (lost records, dropped writes) goes on.
    assert!(m.lost_polls >= 1, "{m:?}");
    a.leave().await;
}

/// A long reseed (a store that came back empty, written back one binding a round) does not
/// hold up what the router learns meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_learned_during_a_long_reseed_is_written_before_the_reseed_ends() {
    const HELD: usize = 3_000;
    let server = RedisServer::start();
    let a = Member::join_with(&server, Router::builder(), &["x"], fast_config().batch(1)).await;
    for i in 0..HELD {
        initialize(&a.router, &format!("held-{i}"));
    }
    a.synced().await;
    // The store comes back empty: the marker and every binding are gone.
    let (before, written_before) = {
        let m = a.store.metrics();
        (m.reseeds, m.reseed_writes)
    };
    let _: () = redis::cmd("FLUSHALL").query(&mut server.admin()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.store.metrics().reseeds == before {
        assert!(Instant::now() < deadline, "no reseed started");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    initialize(&a.router, "fresh");
    while server.get(&binding_key("fresh")).is_none() {
        assert!(
            Instant::now() < deadline,
            "the new session was never written"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let written = a.store.metrics().reseed_writes - written_before;
    assert!(
        written < HELD as u64,
        "written after the reseed's {written} writes of {HELD} bindings"
    );
    a.leave().await;
}

/// The operator key every router of these tests reads: `Mcp-Param-Workspace`.
fn by_workspace() -> mcp_affinity::router::RouterBuilder {
    let workspace = key_fn(|req| req.headers.get("mcp-param-workspace").map(|v| v.as_bytes()));
    Router::builder().operator_key(workspace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_routers_racing_to_bind_the_same_keys_end_with_one_owner_each() {
    let server = RedisServer::start();
    // Backends in different orders: ties of the placement policy break differently.
    let orders = [["x", "y", "z"], ["y", "z", "x"], ["z", "x", "y"]];
    let mut fleet = Vec::new();
    for names in &orders {
        fleet.push(Member::join(&server, by_workspace(), names).await);
    }
    let keys: Vec<String> = (0..12).map(|i| format!("ws{i}")).collect();
    // Every router gets each key's first request at once: nobody has bound it, so each
    // places it, and each router's bind races the others' to the store.
    for key in &keys {
        let request = post(&[MODERN, ("mcp-param-workspace", key)]);
        for member in &fleet {
            let exchange = forward(member.route(&request).await);
            answer(&member.router, exchange, 200, &[]);
        }
    }
    for member in &fleet {
        member.synced().await;
    }
    let taken: u64 = fleet.iter().map(|m| m.store.metrics().binds_taken).sum();
    let adopted: u64 = fleet.iter().map(|m| m.router.metrics().store_adopted).sum();
    assert!(
        taken > 0 && adopted > 0,
        "no race was lost: {taken} taken, {adopted} adopted"
    );
    // Every router, and a newcomer that only reads the store, sends each key to one owner.
    let newcomer = Member::join(&server, by_workspace(), &["x", "y", "z"]).await;
    for key in &keys {
        let request = post(&[MODERN, ("mcp-param-workspace", key)]);
        let exchange = forward(newcomer.route(&request).await);
        let owner = newcomer.name_of(exchange.backend());
        for member in &fleet {
            let exchange = forward(member.route(&request).await);
            assert_eq!(member.name_of(exchange.backend()), owner, "{key}");
        }
    }
    assert_eq!(newcomer.store.metrics().found, keys.len() as u64);
    for member in fleet {
        member.leave().await;
    }
    newcomer.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_removed_on_one_router_is_refused_as_gone_on_another_after_it_polls() {
    let server = RedisServer::start();
    let a = Member::join(&server, Router::builder(), &["x", "y"]).await;
    let b = Member::join(&server, Router::builder(), &["x", "y"]).await;
    let victim = initialize_on(&a.router, a.ids[0], "v");
    let cached = initialize_on(&a.router, a.ids[0], "c");
    a.synced().await;
    // B routes one of them already (it caches it); the other it has never seen.
    let exchange = forward(b.route(&session(&cached)).await);
    assert_eq!(b.name_of(exchange.backend()), "x");
    b.router
        .on_exchange_end(exchange, End::Completed, Instant::now());
    // A removes x. The loss is dated after the bindings (bound_at is in whole seconds, and
    // the fleet allows 2 s of clock skew): A's clock is ahead.
    let later = Instant::now() + Duration::from_secs(10);
    a.router.remove_backend(a.ids[0], later).unwrap();
    a.synced().await;
    assert!(
        server.keys("t:lost:*").len() == 1,
        "the lost record is written"
    );
    // B reads the lost records on its next polls.
    let polls = b.store.metrics().lost_polls;
    eventually("B polled twice", Duration::from_secs(2), || {
        b.store.metrics().lost_polls >= polls + 2
    })
    .await;
    assert!(b.store.metrics().lost_records >= 1);
    for id in [&victim, &cached] {
        let rejection = rejected(b.route(&session(id)).await);
        assert_eq!(
            rejection.reason(),
            Reason::OwnerGone(KeyKind::Session),
            "{id}"
        );
        assert_eq!(rejection.status(), StatusCode::NOT_FOUND);
    }
    // A new session on y routes everywhere.
    let fresh = initialize_on(&a.router, a.ids[1], "f");
    a.synced().await;
    assert_eq!(
        b.name_of(forward(b.route(&session(&fresh)).await).backend()),
        "y"
    );
    a.leave().await;
    b.leave().await;
}

// --- Faults: the outage policy -----------------------------------------------------------------

/// Ends a forwarded exchange as if its response completed.
fn done(member: &Member, exchange: mcp_affinity::router::Exchange) {
    member
        .router
        .on_exchange_end(exchange, End::Completed, Instant::now());
}

/// The outage policy for a key this router does not know: 503 + `Retry-After`
/// (`StoreUnavailable`), never 404, never a guess.
#[track_caller]
fn assert_store_unavailable(routed: Routed) {
    let rejection = rejected(routed);
    assert_eq!(
        rejection.reason(),
        Reason::StoreUnavailable(KeyKind::Session)
    );
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(rejection.headers().contains_key("retry-after"));
}

/// A circuit that stays open long enough to look at.
fn slow_cool_down() -> RedisStoreConfig {
    fast_config().breaker_cool_down(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_gets_503s_within_the_timeout_while_local_hits_and_new_sessions_go_on() {
    let mut server = RedisServer::start();
    let a = Member::join(&server, Router::builder(), &["x", "y"]).await;
    let b = Member::join_with(&server, Router::builder(), &["x", "y"], slow_cool_down()).await;
    initialize(&a.router, "known-here");
    let elsewhere = initialize(&a.router, "known-elsewhere");
    a.synced().await;
    done(&b, forward(b.route(&session("known-here")).await));

    server.pause();
    // A key B does not know: 503 within the lookup timeout.
    let start = Instant::now();
    assert_store_unavailable(b.route(&session("known-elsewhere")).await);
    assert!(
        start.elapsed() < LOOKUP_TIMEOUT + SLACK,
        "{:?}",
        start.elapsed()
    );
    // A key B knows routes, with no lookup.
    let lookups = b.store.metrics().lookups;
    done(&b, forward(b.route(&session("known-here")).await));
    assert_eq!(b.store.metrics().lookups, lookups);
    // A new conversation is placed and learned; its bind waits for the store.
    let fresh = initialize(&b.router, "fresh");
    // Timeouts open the circuit; then lookups answer at once, without a call.
    eventually("B's circuit opens", Duration::from_secs(3), || {
        b.store.circuit() == Circuit::Open
    })
    .await;
    // (A call to the paused server would wait out the lookup timeout.)
    let (start, rejected) = (Instant::now(), b.store.metrics().circuit_rejected);
    assert_store_unavailable(b.route(&session("known-elsewhere")).await);
    assert!(start.elapsed() < LOOKUP_TIMEOUT, "{:?}", start.elapsed());
    assert!(b.store.metrics().circuit_rejected > rejected);
    let m = b.store.metrics();
    assert!(m.errors.timeouts >= 1 && m.circuit_opened >= 1 && m.circuit_rejected >= 1);
    assert!(
        b.router.store_queue_len() + m.pending_writes >= 1,
        "the bind of `fresh` waits"
    );

    server.resume();
    // The probe after the cool-down closes the circuit, and the queue drains by itself.
    eventually("B's circuit closes", Duration::from_secs(5), || {
        b.store.circuit() == Circuit::Closed
    })
    .await;
    b.synced().await;
    assert_eq!(b.router.store_queue_len(), 0);
    assert_eq!(b.store.metrics().pending_writes, 0);
    assert!(
        server.get(&binding_key("fresh")).is_some(),
        "the binding appears"
    );
    let exchange = forward(a.route(&session("fresh")).await);
    assert_eq!(a.name_of(exchange.backend()), b.name_of(fresh));
    done(&a, exchange);
    // And what B could not look up during the outage, it can now.
    let exchange = forward(b.route(&session("known-elsewhere")).await);
    assert_eq!(b.name_of(exchange.backend()), a.name_of(elsewhere));
    done(&b, exchange);
    assert!(b.store.metrics().reseeds >= 1, "reseeded after the outage");
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_opens_the_circuit_and_a_restart_on_its_port_recovers_and_reseeds() {
    let mut server = RedisServer::start();
    let a = Member::join(&server, Router::builder(), &["x", "y"]).await;
    let b = Member::join_with(&server, Router::builder(), &["x", "y"], slow_cool_down()).await;
    let before = initialize(&a.router, "before-kill");
    a.synced().await;

    server.kill();
    let start = Instant::now();
    assert_store_unavailable(b.route(&session("before-kill")).await);
    assert!(
        start.elapsed() < LOOKUP_TIMEOUT + SLACK,
        "{:?}",
        start.elapsed()
    );
    let during = initialize(&b.router, "during");
    eventually("B's circuit opens", Duration::from_secs(3), || {
        b.store.circuit() == Circuit::Open
    })
    .await;
    // (A call to the dead server would be refused at once too: the answer says which.)
    let start = Instant::now();
    assert_eq!(
        b.store.lookup(&binding_key("before-kill")).await,
        Answer::Unavailable(Unavailable::CircuitOpen)
    );
    assert!(start.elapsed() < LOOKUP_TIMEOUT, "{:?}", start.elapsed());
    // After the cool-down one probe tries, fails, and the circuit opens again.
    let opened = b.store.metrics().circuit_opened;
    eventually(
        "a failed probe opens B's circuit again",
        Duration::from_secs(3),
        || b.store.metrics().circuit_opened > opened,
    )
    .await;
    assert!(b.store.metrics().errors.connection >= 1);

    // Back, empty, on the same port: the next probe closes the circuit, and the bindings
    // made before (A's) and during the outage (B's) are written again.
    server.restart();
    assert!(server.keys("t:b:*").is_empty(), "restarted empty");
    for member in [&a, &b] {
        eventually("the circuit closes", Duration::from_secs(5), || {
            member.store.circuit() == Circuit::Closed
        })
        .await;
        member.synced().await;
    }
    let newcomer = Member::join(&server, Router::builder(), &["y", "x"]).await;
    let exchange = forward(newcomer.route(&session("before-kill")).await);
    assert_eq!(newcomer.name_of(exchange.backend()), a.name_of(before));
    done(&newcomer, exchange);
    let exchange = forward(newcomer.route(&session("during")).await);
    assert_eq!(newcomer.name_of(exchange.backend()), b.name_of(during));
    done(&newcomer, exchange);
    let m = a.store.metrics();
    assert!(
        m.store_restarts >= 1 && m.reseeds >= 1 && m.reseed_writes >= 1,
        "{m:?}"
    );
    a.leave().await;
    b.leave().await;
    newcomer.leave().await;
}

/// A router that joins now routes session `id` to the backend named `name`.
async fn routed_by_a_newcomer(server: &RedisServer, id: &str, name: &str) {
    let newcomer = Member::join(server, Router::builder(), &["y", "x"]).await;
    let exchange = forward(newcomer.route(&session(id)).await);
    assert_eq!(newcomer.name_of(exchange.backend()), name);
    done(&newcomer, exchange);
    newcomer.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_comes_back_empty_is_seen_by_its_marker_and_reseeded() {
    let mut server = RedisServer::start();
    let a = Member::join(&server, Router::builder(), &["x", "y"]).await;
    let owner = initialize(&a.router, "s1");
    a.synced().await;
    let name = a.name_of(owner);
    // Emptied in place: no call fails, the marker tells.
    let errors = a.store.metrics().errors;
    let _: () = redis::cmd("FLUSHALL").query(&mut server.admin()).unwrap();
    eventually(
        "the binding is written again",
        Duration::from_secs(3),
        || server.get(&binding_key("s1")).is_some(),
    )
    .await;
    assert_eq!(a.store.metrics().errors, errors);
    assert_eq!(a.store.metrics().store_restarts, 1);
    routed_by_a_newcomer(&server, "s1", &name).await;
    // Restarted at once on the same port: the same.
    server.restart();
    eventually(
        "the binding is written again",
        Duration::from_secs(5),
        || server.get(&binding_key("s1")).is_some(),
    )
    .await;
    assert_eq!(a.store.metrics().store_restarts, 2);
    routed_by_a_newcomer(&server, "s1", &name).await;
    a.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_cost_at_most_the_call_that_meets_them() {
    let server = RedisServer::start();
    let a = Member::join(&server, Router::builder(), &["x", "y"]).await;
    let b = Member::join(&server, Router::builder(), &["x", "y"]).await;
    let ids: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    for id in &ids {
        initialize(&a.router, id);
    }
    a.synced().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut server.admin())
        .unwrap();
    assert!(killed >= 2, "A's and B's connections: {killed}");
    // B looks up every session once: the connection is made again after the first call
    // that meets the dead one.
    let mut unavailable = 0;
    for id in &ids {
        match b.route(&session(id)).await {
            Routed::Forward(exchange) => done(&b, exchange),
            routed => {
                assert_store_unavailable(routed);
                unavailable += 1;
            }
        }
    }
    assert!(unavailable <= 1, "{unavailable} lookups failed");
    // A's writes go on over its new connection.
    let after = initialize(&a.router, "after");
    a.synced().await;
    let exchange = forward(b.route(&session("after")).await);
    assert_eq!(b.name_of(exchange.backend()), a.name_of(after));
    done(&b, exchange);
    for member in [&a, &b] {
        assert_eq!(member.store.circuit(), Circuit::Closed);
        assert!(member.store.metrics().errors.connection <= 1);
    }
    a.leave().await;
    b.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_missing_from_a_store_that_came_back_or_failed_lately_is_503_not_404() {
    let mut server = RedisServer::start();
    // This router's sync task reads the marker once, at its start, and not again for an hour:
    // what it learns of the store's changes, it learns from its lookups.
    let config = fast_config()
        .lost_poll(Duration::from_secs(3600))
        .recovery_grace(Duration::from_millis(500));
    let b = Member::join_with(&server, Router::builder(), &["x", "y"], config).await;
    eventually(
        "the sync task read the marker",
        Duration::from_secs(3),
        || b.store.metrics().lost_polls >= 1,
    )
    .await;
    assert!(server.get("t:epoch").is_some());
    let nobody = "t:b:0:2:nobody";
    assert_eq!(b.store.lookup(nobody).await, Answer::Missing);

    // Emptied in place (no call fails): the marker is gone, so a miss may be a binding on
    // its way back.
    let _: () = redis::cmd("FLUSHALL").query(&mut server.admin()).unwrap();
    assert_eq!(
        b.store.lookup(nobody).await,
        Answer::Unavailable(Unavailable::Changed)
    );
    // Another router set a marker of its own first: still not the one this router knows.
    let _: () = redis::cmd("SET")
        .arg("t:epoch")
        .arg("another")
        .query(&mut server.admin())
        .unwrap();
    assert_eq!(
        b.store.lookup(nobody).await,
        Answer::Unavailable(Unavailable::Changed)
    );
    b.leave().await;

    // A store that lost its connection lately: misses are 503 for the recovery grace, then
    // 404. (No sync task here: the marker is not read.)
    let store = RedisStore::connect(&server.url(), config_with_grace())
        .await
        .unwrap();
    assert_eq!(store.lookup(nobody).await, Answer::Missing);
    server.kill();
    assert_eq!(
        store.lookup(nobody).await,
        Answer::Unavailable(Unavailable::Connection)
    );
    server.restart();
    // The connection is made again in the background: the first lookups may still meet it
    // down (and extend the grace); the first that reaches the store is a 503, not a 404.
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        let answer = store.lookup(nobody).await;
        if answer != Answer::Unavailable(Unavailable::Connection) || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer, Answer::Unavailable(Unavailable::Recovering));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.lookup(nobody).await, Answer::Missing);
}

fn config_with_grace() -> RedisStoreConfig {
    fast_config().recovery_grace(Duration::from_millis(500))
}

/// Waits (at most 5 s) until a taker has everything `router` queued for the store.
async fn until_taken(router: &Router, taker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while router.store_queue_len() > 0 {
        assert!(Instant::now() < deadline, "{taker} took the bind");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A write-through in its own task.
fn spawn_write_through(
    store: &RedisStore,
    router: &std::sync::Arc<Router>,
) -> tokio::task::JoinHandle<()> {
    let (store, router) = (store.clone(), router.clone());
    tokio::spawn(async move { store.write_through(&router).await })
}

/// Asserts that `through` still waits 300 ms in while the paused `server` holds another
/// taker's batch, resumes the server, and that it returns (within 2 s) with `id` bound.
async fn waits_for_the_batch_on_its_way(
    server: &mut RedisServer,
    through: tokio::task::JoinHandle<()>,
    id: &str,
) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !through.is_finished(),
        "the write-through returned while the bind was still on its way"
    );
    server.resume();
    tokio::time::timeout(Duration::from_secs(2), through)
        .await
        .expect("the write-through returns once the bind is written")
        .unwrap();
    assert!(
        server.get(&binding_key(id)).is_some(),
        "the bind is in the store when the write-through returns"
    );
}

/// The write-through of a response that revealed a key returns only once the key is in the
/// store, even when another taker (here a first write-through; in a proxy, often the sync
/// task) took its bind a moment before and is still on its way: otherwise the client could
/// present the key to another router before the store has it (found by
/// `tests/e2e_fleet_redis.rs` under load: 503s after recovery, 404s once the grace is over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_returns_only_once_a_bind_another_took_is_in_the_store() {
    let mut server = RedisServer::start();
    let (router, _) = fleet_router(Router::builder(), &["x", "y"]);
    // A timeout far beyond the test's bounds: a write-through that returned at its own
    // timeout, not at the other's release, would fail the test.
    let config = fast_config().command_timeout(Duration::from_secs(30));
    let store = RedisStore::open(&server.url(), config).expect("store");
    assert_eq!(store.lookup("warm-up").await, Answer::Missing);
    initialize(&router, "s1");
    assert_eq!(router.store_queue_len(), 1, "the bind is queued");

    // The first write-through takes the bind, and meets a server that answers nothing; the
    // second finds nothing to take, and waits for the first's batch.
    server.pause();
    let first = spawn_write_through(&store, &router);
    until_taken(&router, "the first write-through").await;
    let second = spawn_write_through(&store, &router);
    waits_for_the_batch_on_its_way(&mut server, second, "s1").await;
    first.await.unwrap();
}

/// The same with the sync task as the other taker, as in a proxy: it took the bind a moment
/// before the write-through looked, and is still sending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_waits_for_a_bind_the_sync_task_took_and_is_still_sending() {
    let mut server = RedisServer::start();
    let (router, _) = fleet_router(Router::builder(), &["x", "y"]);
    // No poll after the first (nothing but flushes), and timeouts beyond the test's bounds.
    let config = fast_config()
        .command_timeout(Duration::from_secs(30))
        .lost_poll(Duration::from_secs(3600));
    let store = RedisStore::connect(&server.url(), config).await.unwrap();
    let sync = store.spawn_sync(router.clone());
    tokio::time::timeout(Duration::from_secs(5), sync.synced())
        .await
        .expect("the first round");

    server.pause();
    initialize(&router, "s1");
    until_taken(&router, "the sync task").await;
    let through = spawn_write_through(&store, &router);
    waits_for_the_batch_on_its_way(&mut server, through, "s1").await;
    sync.shutdown().await;
}

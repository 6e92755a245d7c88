//! Model test: random sequences of requests, responses, backend changes (removals, restarts,
//! drains, failed checks, crashes and comebacks), failed deliveries and clock steps, checked
//! against a plain model of ownership. The router must never pin a key to a backend other than
//! the incarnation that minted it, never pin an id two backends minted, never route to a
//! removed or down backend, never place on a backend that is not ready, and must pin every
//! key whose minter is alive.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use mcp_affinity::router::{
    End, HeadOutcome, Health, How, Probe, Reason, Routed, Router, Undelivered,
};
use mcp_affinity::table::KeyKind;
use mcp_affinity::table::MemoryTableConfig;
use mcp_affinity::{BackendId, TenantId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    AddBackend,
    RemoveBackend(usize),
    RestartBackend(usize),
    Drain(usize),
    Undrain(usize),
    Health(usize, bool),
    /// The backend's process dies: refused health checks declare it down.
    Crash(usize),
    /// A crashed backend answers again: good health checks bring it back.
    Comeback(usize),
    /// A request with session `id` finds its owner's port closed.
    Refused {
        id: usize,
    },
    /// An initialize finds its backend's port closed, and is placed again.
    RefusedStart {
        id: usize,
    },
    /// A keyless POST whose answer mints session `id` (or fails with `status`).
    Initialize {
        id: usize,
        status: u16,
    },
    /// A request with session `id`, answered with `status`.
    Request {
        id: usize,
        status: u16,
    },
    Delete {
        id: usize,
        status: u16,
    },
    /// A legacy SSE stream learning `id`, used by `messages` POSTs, then ended.
    SseSession {
        id: usize,
        messages: usize,
    },
    /// A modern call creating task `id`, then `polls` tasks/get.
    Task {
        id: usize,
        polls: usize,
    },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let backend = 0usize..6;
    let id = 0usize..12;
    let status = prop::sample::select(vec![200u16, 200, 200, 202, 204, 400, 404, 500]);
    prop_oneof![
        2 => Just(Op::AddBackend),
        1 => backend.clone().prop_map(Op::RemoveBackend),
        1 => backend.clone().prop_map(Op::RestartBackend),
        1 => backend.clone().prop_map(Op::Drain),
        1 => backend.clone().prop_map(Op::Undrain),
        1 => (backend.clone(), any::<bool>()).prop_map(|(b, ok)| Op::Health(b, ok)),
        1 => backend.clone().prop_map(Op::Crash),
        1 => backend.clone().prop_map(Op::Comeback),
        1 => id.clone().prop_map(|id| Op::Refused { id }),
        1 => id.clone().prop_map(|id| Op::RefusedStart { id }),
        4 => (id.clone(), status.clone()).prop_map(|(id, status)| Op::Initialize { id, status }),
        6 => (id.clone(), status.clone()).prop_map(|(id, status)| Op::Request { id, status }),
        1 => (id.clone(), status).prop_map(|(id, status)| Op::Delete { id, status }),
        1 => (id.clone(), 0usize..3).prop_map(|(id, messages)| Op::SseSession { id, messages }),
        1 => (id, 0usize..3).prop_map(|(id, polls)| Op::Task { id, polls }),
        1 => (0u64..120).prop_map(Op::Advance),
    ]
}

/// Who a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// The backend (incarnation) that minted it.
    Minter(BackendId),
    /// Two live backends minted it: it must reach neither.
    Contested,
}

/// The model: which backends live, which are down, and who minted each key.
#[derive(Default)]
struct Model {
    backends: Vec<BackendId>,
    removed: Vec<BackendId>,
    down: Vec<BackendId>,
    minted: HashMap<String, Owner>,
}

impl Model {
    fn pick(&self, i: usize) -> Option<BackendId> {
        (!self.backends.is_empty()).then(|| self.backends[i % self.backends.len()])
    }

    /// The live minter of `key`, if any.
    fn owner(&self, key: &str) -> Option<BackendId> {
        match self.minted.get(key)? {
            Owner::Minter(b) if self.backends.contains(b) && !self.down.contains(b) => Some(*b),
            _ => None,
        }
    }

    /// `b` is down: every key it held is lost with it.
    fn crash(&mut self, b: BackendId) {
        if !self.down.contains(&b) {
            self.down.push(b);
        }
        self.lose(b);
    }

    /// Every key of `b` is lost with it.
    fn lose(&mut self, b: BackendId) {
        self.minted.retain(|_, owner| *owner != Owner::Minter(b));
    }

    /// `backend` revealed `key` in a body, whose client already has it.
    fn minted_in_body(&mut self, key: &str, backend: BackendId) {
        match self.owner(key) {
            None if self.minted.get(key) == Some(&Owner::Contested) => {}
            None => {
                self.minted.insert(key.to_string(), Owner::Minter(backend));
            }
            Some(owner) if owner == backend => {}
            Some(_) => {
                self.minted.insert(key.to_string(), Owner::Contested);
            }
        }
    }
}

fn check_forward(
    model: &Model,
    router: &Router,
    routed: &Routed,
    key: Option<&str>,
) -> Result<(), TestCaseError> {
    match (routed, key) {
        (Routed::Lookup(lookup), _) => prop_assert!(false, "no store, yet {:?}", lookup),
        (Routed::Forward(ex), Some(key)) => {
            prop_assert_eq!(ex.how(), How::Pinned);
            prop_assert_eq!(
                Some(ex.backend()),
                model.owner(key),
                "pinned {} elsewhere (minted: {:?})",
                key,
                model.minted.get(key)
            );
            prop_assert!(
                !model.removed.contains(&ex.backend()),
                "routed to a removed backend"
            );
        }
        (Routed::Forward(ex), None) => {
            prop_assert!(
                model.backends.contains(&ex.backend()),
                "placed on an unknown backend"
            );
            let info = router
                .backends()
                .into_iter()
                .find(|b| b.id == ex.backend())
                .unwrap();
            prop_assert!(
                info.ready(),
                "placed on a backend that is not ready: {:?}",
                info
            );
        }
        (Routed::Reject(r), Some(key)) => {
            // A key whose minter lives must be routed.
            prop_assert!(model.owner(key).is_none(), "rejected {}: {}", key, r);
        }
        (Routed::Reject(_), None) => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_router_follows_the_model_of_ownership(ops in prop::collection::vec(op(), 1..80)) {
        // No idle expiry here, so that the model is exact about who owns what.
        let router = Router::builder()
            .table_config(MemoryTableConfig::new().with_idle_ttl(None))
            .health_thresholds(1, 1)
            .build();
        let mut model = Model::default();
        let mut clock = Clock::new();
        for op in ops {
            let now = clock.now();
            match op {
                Op::AddBackend => {
                    let name = format!("b{}", model.backends.len() + model.removed.len());
                    model.backends.push(router.add_backend(TenantId::DEFAULT, &name, 1).unwrap());
                }
                Op::RemoveBackend(i) => if let Some(b) = model.pick(i) {
                    router.remove_backend(b, now).unwrap();
                    model.backends.retain(|x| *x != b);
                    model.down.retain(|x| *x != b);
                    model.removed.push(b);
                    model.lose(b);
                },
                Op::RestartBackend(i) => if let Some(b) = model.pick(i) {
                    let reborn = router.restart_backend(b, now).unwrap();
                    prop_assert_ne!(reborn, b);
                    model.backends.retain(|x| *x != b);
                    model.down.retain(|x| *x != b);
                    model.backends.push(reborn);
                    model.removed.push(b);
                    model.lose(b);
                },
                Op::Crash(i) => if let Some(b) = model.pick(i) {
                    prop_assert_eq!(router.report_health(b, Probe::Refused, now).unwrap(), Health::Down);
                    model.crash(b);
                },
                Op::Comeback(i) => if let Some(b) = model.pick(i) {
                    prop_assert_eq!(router.report_health(b, Probe::Up, now).unwrap(), Health::Healthy);
                    model.down.retain(|x| *x != b);
                },
                Op::Refused { id } => {
                    let key = format!("s{id}");
                    let request = post("/mcp", &[("mcp-session-id", &key)]);
                    let routed = router.route(&request, now);
                    check_forward(&model, &router, &routed, Some(&key))?;
                    if let Routed::Forward(ex) = routed {
                        let b = ex.backend();
                        let rejection = rejected(router.on_undelivered(ex, Undelivered::Refused, now));
                        prop_assert_eq!(rejection.reason(), Reason::OwnerDown(KeyKind::Session));
                        model.crash(b);
                    }
                },
                Op::RefusedStart { id } => {
                    let key = format!("s{id}");
                    let routed = router.route(&post("/mcp", &[]), now);
                    check_forward(&model, &router, &routed, None)?;
                    if let Routed::Forward(ex) = routed {
                        let first = ex.backend();
                        model.crash(first);
                        let routed = router.on_undelivered(ex, Undelivered::Refused, now);
                        check_forward(&model, &router, &routed, None)?;
                        match routed {
                            Routed::Forward(mut ex) => {
                                prop_assert_ne!(ex.backend(), first, "placed again on the same backend");
                                let outcome = respond(&router, &mut ex, 200, &[("mcp-session-id", &key)], &[], now);
                                let backend = ex.backend();
                                router.on_exchange_end(ex, End::Completed, now);
                                match (model.owner(&key), model.minted.get(&key)) {
                                    (Some(owner), _) if owner != backend => {
                                        prop_assert!(matches!(outcome, HeadOutcome::Replace(_)), "conflict forwarded");
                                    }
                                    (None, Some(Owner::Contested)) => {
                                        prop_assert!(matches!(outcome, HeadOutcome::Replace(_)), "contested id bound");
                                    }
                                    (None, _) => { model.minted.insert(key, Owner::Minter(backend)); }
                                    _ => {}
                                }
                            }
                            Routed::Reject(r) => {
                                prop_assert_eq!(r.reason(), Reason::NoReadyBackend);
                            }
                            Routed::Lookup(_) => prop_assert!(false, "no store"),
                        }
                    }
                },
                Op::Drain(i) => if let Some(b) = model.pick(i) {
                    router.drain_backend(b, None, now).unwrap();
                },
                Op::Undrain(i) => if let Some(b) = model.pick(i) {
                    router.undrain_backend(b, now).unwrap();
                },
                Op::Health(i, ok) => if let Some(b) = model.pick(i) {
                    if router.report_health(b, ok, now).unwrap() == Health::Healthy {
                        model.down.retain(|x| *x != b);
                    }
                },
                Op::Initialize { id, status } => {
                    let key = format!("s{id}");
                    let routed = router.route(&post("/mcp", &[]), now);
                    check_forward(&model, &router, &routed, None)?;
                    if let Routed::Forward(mut ex) = routed {
                        let outcome = respond(&router, &mut ex, status, &[("mcp-session-id", &key)], &[], now);
                        let backend = ex.backend();
                        router.on_exchange_end(ex, End::Completed, now);
                        let ok = (200..300).contains(&status);
                        match (model.owner(&key), model.minted.get(&key)) {
                            (Some(owner), _) if ok && owner != backend => {
                                prop_assert!(matches!(outcome, HeadOutcome::Replace(_)), "conflict forwarded");
                            }
                            (None, Some(Owner::Contested)) if ok => {
                                prop_assert!(matches!(outcome, HeadOutcome::Replace(_)), "contested id bound");
                            }
                            (None, _) if ok => { model.minted.insert(key, Owner::Minter(backend)); }
                            _ => {}
                        }
                    }
                }
                Op::Request { id, status } => {
                    let key = format!("s{id}");
                    let routed = router.route(&post("/mcp", &[("mcp-session-id", &key)]), now);
                    check_forward(&model, &router, &routed, Some(&key))?;
                    if let Routed::Forward(mut ex) = routed {
                        let _ = respond(&router, &mut ex, status, &[], &[], now);
                        router.on_exchange_end(ex, End::Completed, now);
                        // Without principal binding a 404 may be the backend refusing a
                        // stranger: the session is kept (the backend is the final arbiter).
                    }
                }
                Op::Delete { id, status } => {
                    let key = format!("s{id}");
                    let routed = router.route(&delete("/mcp", &[("mcp-session-id", &key)]), now);
                    check_forward(&model, &router, &routed, Some(&key))?;
                    if let Routed::Forward(mut ex) = routed {
                        let _ = respond(&router, &mut ex, status, &[], &[], now);
                        router.on_exchange_end(ex, End::Completed, now);
                        if (200..300).contains(&status) {
                            model.minted.remove(&key);
                        }
                    }
                }
                Op::SseSession { id, messages } => {
                    let key = format!("sse{id}");
                    let routed = router.route(&get("/sse", &[]), now);
                    check_forward(&model, &router, &routed, None)?;
                    if let Routed::Forward(mut stream) = routed {
                        let event = format!("event: endpoint\r\ndata: /messages/?session_id={key}\r\n\r\n");
                        let _ = respond(&router, &mut stream, 200, &[SSE], &[event.as_bytes()], now);
                        model.minted_in_body(&key, stream.backend());
                        let uri = format!("/messages/?session_id={key}");
                        for _ in 0..messages {
                            let routed = router.route(&post(&uri, &[]), now);
                            check_forward(&model, &router, &routed, Some(&key))?;
                            if let Routed::Forward(ex) = routed {
                                router.on_exchange_end(ex, End::Completed, now);
                            }
                        }
                        let owner = stream.backend();
                        router.on_exchange_end(stream, End::Aborted, now);
                        // The session lives as long as its stream.
                        if model.minted.get(&key) == Some(&Owner::Minter(owner)) {
                            model.minted.remove(&key);
                        }
                    }
                }
                Op::Task { id, polls } => {
                    let key = format!("t{id}");
                    let call = post("/mcp", &[MODERN, ("mcp-method", "tools/call"), ("mcp-name", "job")]);
                    let routed = router.route(&call, now);
                    check_forward(&model, &router, &routed, None)?;
                    if let Routed::Forward(mut ex) = routed {
                        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"resultType":"task","taskId":"{key}"}}}}"#);
                        let _ = respond(&router, &mut ex, 200, &[JSON], &[body.as_bytes()], now);
                        model.minted_in_body(&key, ex.backend());
                        router.on_exchange_end(ex, End::Completed, now);
                    }
                    for _ in 0..polls {
                        let poll = post("/mcp", &[MODERN, ("mcp-method", "tasks/get"), ("mcp-name", &key)]);
                        let routed = router.route(&poll, now);
                        check_forward(&model, &router, &routed, Some(&key))?;
                        if let Routed::Forward(ex) = routed {
                            router.on_exchange_end(ex, End::Completed, now);
                        }
                    }
                }
                Op::Advance(secs) => { clock.advance(Duration::from_secs(secs)); }
            }
        }
    }
}

//! The whole story in one process, in a few seconds:
//!
//! 1. three stateful MCP servers built with `rmcp` (Streamable HTTP, 127.0.0.1, OS-assigned
//!    ports), each with a `whoami` tool that returns its name and a per-session counter;
//! 2. the proxy of `examples/proxy.rs`, in-process, on 127.0.0.1;
//! 3. 36 `rmcp` clients that each open a session through the proxy and call `whoami` five
//!    times: every reply must come from the session's replica with the next count;
//! 4. one backend removed from the router (`remove_backend`): its clients get 404 and rmcp
//!    re-initializes them on a live replica (their counters restart at 1); the others carry on.
//!
//! ```sh
//! cargo run --release --example demo
//! ```
//!
//! Exits 0 when there was no affinity violation and every client of the removed backend
//! moved; 1 otherwise.

#![allow(clippy::disallowed_methods)]

#[path = "common/proxy.rs"]
mod proxy;
#[path = "common/rmcp_peers.rs"]
mod rmcp_peers;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rmcp_peers::{Replica, Session, Track};

const REPLICAS: usize = 3;
const CLIENTS: usize = 36;
const CALLS: usize = 5;
const CALLS_AFTER: usize = 3;

struct Client {
    session: Session,
    track: Track,
    /// The replica the client started on.
    first: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, String> {
    let started = Instant::now();
    let mut replicas = Vec::new();
    for i in 1..=REPLICAS {
        let replica = Replica::start(&format!("r{i}"))
            .await
            .map_err(|e| format!("start replica: {e}"))?;
        replicas.push(replica);
    }
    let config = proxy::Config {
        backends: replicas.iter().map(Replica::url).collect(),
        ..proxy::Config::default()
    };
    let running = proxy::Running::start(&config).await?;
    let name_of = |url: &str| {
        replicas
            .iter()
            .find(|r| r.url() == url)
            .map_or("?".to_string(), |r| r.name.clone())
    };
    println!("replicas:");
    for r in &replicas {
        println!("  {} at {}", r.name, r.url());
    }
    println!(
        "proxy at {} (admin {})",
        running.url("/mcp"),
        running.admin_url("/metrics")
    );

    // Phase 1: 36 sessions through the proxy, 5 calls each, all at once.
    let url = running.url("/mcp");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let url = url.clone();
        set.spawn(async move {
            let session = rmcp_peers::connect(&url, true).await?;
            let mut track = Track::default();
            for _ in 0..CALLS {
                let reply = rmcp_peers::whoami(&session).await?;
                track.record(&reply);
            }
            let first = track.replica.clone().unwrap_or_default();
            Ok::<_, String>(Client {
                session,
                track,
                first,
            })
        });
    }
    let mut clients = Vec::new();
    while let Some(joined) = set.join_next().await {
        clients.push(joined.map_err(|e| e.to_string())??);
    }
    let violations_1: u64 = clients.iter().map(|c| c.track.violations).sum();
    println!("\nphase 1: {CLIENTS} sessions x {CALLS} calls through the proxy");
    print_table(&clients, |c| c.first.clone());
    let m = running.proxy.metrics();
    println!(
        "router: placed {} pinned {} keys learned {} rejected {}",
        m.placed,
        m.pinned,
        m.keys_learned,
        m.rejected_total()
    );

    // Phase 2: remove the backend with the most sessions.
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for c in &clients {
        *per_backend.entry(c.first.clone()).or_default() += 1;
    }
    let victim = per_backend
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(name, _)| name.clone())
        .ok_or("no sessions")?;
    let slot = m
        .backends
        .iter()
        .find(|b| name_of(&b.label) == victim)
        .map(|b| b.id.slot())
        .ok_or("victim not in the router")?;
    let purged = running.proxy.remove(slot)?;
    println!(
        "\nphase 2: remove_backend({victim}) took {purged} sessions away; their clients get 404 and re-initialize"
    );
    let mut set = tokio::task::JoinSet::new();
    for mut client in clients {
        let victim = victim.clone();
        set.spawn(async move {
            let moved = client.first == victim;
            if moved {
                // rmcp answers our 404 with a new initialize: a new session on a live replica.
                client.track.restart();
            }
            for _ in 0..CALLS_AFTER {
                let reply = rmcp_peers::whoami(&client.session).await?;
                let ok = client.track.record(&reply);
                if moved && reply.replica == victim {
                    client.track.violations += u64::from(ok);
                }
            }
            Ok::<_, String>(client)
        });
    }
    let mut clients = Vec::new();
    while let Some(joined) = set.join_next().await {
        clients.push(joined.map_err(|e| e.to_string())??);
    }
    let moved: Vec<&Client> = clients.iter().filter(|c| c.first == victim).collect();
    let moved_ok = moved
        .iter()
        .filter(|c| {
            c.track.replica.as_deref() != Some(&victim) && c.track.count == CALLS_AFTER as u64
        })
        .count();
    print_table(&clients, |c| c.track.replica.clone().unwrap_or_default());
    for c in moved.iter().take(3) {
        println!(
            "  e.g. a client of {victim} now on {} with count {}..{} (restarted at 1)",
            c.track.replica.as_deref().unwrap_or("?"),
            c.track.count + 1 - CALLS_AFTER as u64,
            c.track.count
        );
    }
    let violations: u64 = clients.iter().map(|c| c.track.violations).sum();
    let moved = moved.len();

    // Phase 3: every client ends its session (DELETE).
    let mut ended = 0;
    for client in clients {
        if client.session.cancel().await.is_ok() {
            ended += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = running.proxy.metrics();
    println!("\nphase 3: {ended} sessions closed (DELETE)");
    println!(
        "router: placed {} pinned {} learned {} forgotten {} purged {} rejected {} (owner_gone {}), table {}",
        m.placed,
        m.pinned,
        m.keys_learned,
        m.keys_forgotten,
        m.keys_purged,
        m.rejected_total(),
        m.rejected("owner_gone"),
        m.table.len
    );
    running.shutdown().await;
    for r in replicas {
        r.kill().await;
    }

    let pass = violations_1 == 0 && violations == 0 && moved_ok == moved && moved > 0;
    println!(
        "\naffinity violations: {violations} | clients of {victim} re-initialized elsewhere: {moved_ok}/{} | {:.1} s | {}",
        moved,
        started.elapsed().as_secs_f64(),
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(pass)
}

fn print_table(clients: &[Client], replica_of: impl Fn(&Client) -> String) {
    let mut rows: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for c in clients {
        let row = rows.entry(replica_of(c)).or_default();
        row.0 += 1;
        row.1 += c.track.calls;
        row.2 += c.track.violations;
    }
    println!(
        "  {:<8} {:>8} {:>8} {:>11}",
        "backend", "sessions", "calls", "violations"
    );
    for (replica, (sessions, calls, violations)) in &rows {
        println!("  {replica:<8} {sessions:>8} {calls:>8} {violations:>11}");
    }
}

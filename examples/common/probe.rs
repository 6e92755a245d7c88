//! Whether a backend's process is gone, asked after a request to it failed: shared by the
//! proxy and the pingora example.

use std::time::Duration;

use mcp_affinity::router::Undelivered;
use tokio::net::{TcpStream, ToSocketAddrs};

/// Whether nothing listens at `address` now (refused, or its host or network unreachable): a
/// few quick connects, 250 ms each at most and 50 ms apart, since a process killed a moment ago
/// may still have its listening socket while its connections are reset.
pub async fn refuses(address: impl ToSocketAddrs + Clone) -> bool {
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connect = TcpStream::connect(address.clone());
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(250), connect).await {
            if Undelivered::from_io(&e) == Undelivered::Refused {
                return true;
            }
        }
    }
    false
}

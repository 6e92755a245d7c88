//! Where the proxy's serving loops get their connections, and the loop that serves them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::ProxyBody;

/// Where a serving loop gets its connections: a listener, and on a thread of
/// [`Proxy::serve_on_threads`], what the other threads hand it.
pub(super) struct Acceptor {
    pub(super) listener: TcpListener,
    pub(super) share: Option<Share>,
    /// The most connections the loop serves at once; past it, it accepts no more until one
    /// closes (they wait in the listening socket's backlog, as under HAProxy's `maxconn`).
    pub(super) limit: usize,
}

/// A connection on its way from one serving thread to another.
type Handed = (std::net::TcpStream, SocketAddr);

/// One thread's part in sharing the connections evenly: a thread that accepts a connection
/// while it has more open than another hands it to the one with fewest (every thread is woken
/// by a new connection, and the first to accept it gets it: in a burst, often the same one).
/// HAProxy shares its connections between threads the same way.
pub(super) struct Share {
    me: usize,
    /// How many connections each thread has open (counted for the thread it is handed to,
    /// from the moment it is handed).
    open: Arc<[std::sync::atomic::AtomicUsize]>,
    /// Where each thread takes the connections handed to it.
    to: Arc<[tokio::sync::mpsc::UnboundedSender<Handed>]>,
    handed: tokio::sync::mpsc::UnboundedReceiver<Handed>,
}

impl Share {
    /// The parts of `threads` threads.
    pub(super) fn for_threads(threads: usize) -> Vec<Share> {
        let (to, handed): (Vec<_>, Vec<_>) = (0..threads)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let open: Arc<[_]> = (0..threads).map(|_| Default::default()).collect();
        let to: Arc<[_]> = to.into();
        handed
            .into_iter()
            .enumerate()
            .map(|(me, handed)| Share {
                me,
                open: open.clone(),
                to: to.clone(),
                handed,
            })
            .collect()
    }

    /// A connection counted for this thread, into its runtime (uncounted if that fails).
    fn take(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> std::io::Result<(TcpStream, SocketAddr)> {
        let stream = TcpStream::from_std(stream).inspect_err(|_| {
            self.open[self.me].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        Ok((stream, peer))
    }

    /// The thread with the fewest open connections, if it has fewer than this one.
    fn fewer(&self) -> Option<usize> {
        let load = |i: usize| self.open[i].load(std::sync::atomic::Ordering::Relaxed);
        let least = (0..self.open.len()).min_by_key(|&i| load(i))?;
        (load(least) < load(self.me)).then_some(least)
    }
}

impl Acceptor {
    pub(super) fn alone(listener: TcpListener, limit: usize) -> Acceptor {
        Acceptor {
            listener,
            share: None,
            limit,
        }
    }

    /// The next connection this thread serves: one it accepts and keeps, or one handed to it.
    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(share) = &mut self.share else {
            return self.listener.accept().await;
        };
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => accepted?,
                Some((stream, peer)) = share.handed.recv() => {
                    // Counted for this thread by the one that handed it.
                    return share.take(stream, peer);
                }
            };
            let Some(other) = share.fewer() else {
                share.open[share.me].fetch_add(1, Relaxed);
                return Ok((stream, peer));
            };
            // Out of this runtime's reactor, into the other's. (One still queued when the other
            // thread stops is closed unanswered, as one accepted as a thread stops is.)
            let stream = stream.into_std()?;
            share.open[other].fetch_add(1, Relaxed);
            if let Err(unsent) = share.to[other].send((stream, peer)) {
                // That thread has stopped serving (shutting down): this one serves it.
                share.open[other].fetch_sub(1, Relaxed);
                share.open[share.me].fetch_add(1, Relaxed);
                let (stream, peer) = unsent.0;
                return share.take(stream, peer);
            }
        }
    }

    /// A connection this thread served has closed.
    fn closed(&self) {
        if let Some(share) = &self.share {
            share.open[share.me].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Accepts connections until `shutdown`, serving each with the handler `per_connection`
/// makes for its peer (and polling, in the connection's task, the future it makes with it:
/// the connection's dedicated backend connection), at most the acceptor's `limit` at once;
/// then tells every connection to finish its request in flight and close, and waits up to
/// `grace` for them. A connection that takes longer than `header_timeout` to send a request's
/// head (from its start, or from the end of the response before) is closed (hyper's header
/// read timeout). The connections are owned by this future: those still open after the grace
/// period, or when the future is dropped (its task aborted), are dropped with it.
pub(super) async fn serve_with<M, H, F, D>(
    mut acceptor: Acceptor,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    header_timeout: Option<Duration>,
    per_connection: M,
) where
    M: Fn(SocketAddr) -> (H, D),
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
    D: Future<Output = ()> + Send + 'static,
{
    // Each connection has its own stop signal: polling a oneshot receiver is an atomic load,
    // where one `watch` shared by all (hyper-util's `GracefulShutdown`) takes a lock at every
    // poll of every connection.
    let mut stops = HashMap::new();
    let mut connections = tokio::task::JoinSet::new();
    // Accept errors (out of file descriptors, mostly) come in runs: the first of each is told.
    let mut failing = false;
    // The head's timer runs only while hyper waits for a request's head: never while a
    // response streams (a legacy SSE stream may stay idle for as long as both ends like).
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(super::BUFFER_LIMIT);
    if let Some(timeout) = header_timeout {
        http.timer(TokioTimer::new()).header_read_timeout(timeout);
    }
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            Some(ended) = connections.join_next_with_id(), if !connections.is_empty() => {
                // Ended, or panicked: either way its signal goes.
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                stops.remove(&id);
                acceptor.closed();
                continue;
            }
            accepted = acceptor.accept(), if connections.len() < acceptor.limit => {
                match accepted {
                    Ok(accepted) => {
                        failing = false;
                        accepted
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        if !std::mem::replace(&mut failing, true) {
                            eprintln!("proxy: accept: {e} (told once until an accept succeeds)");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (handler, drive) = per_connection(peer);
        let service = service_fn(move |req| {
            let response = handler(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = connections.spawn(async move {
            tokio::pin!(connection, drive, stopped);
            let mut stopping = false;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut connection => return,
                    // Sent or dropped: shutting down.
                    _ = &mut stopped, if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    // Never ends by itself.
                    _ = &mut drive => {}
                }
            }
        });
        stops.insert(task.id(), stop);
    }
    drop(acceptor);
    drop(stops);
    let _ = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

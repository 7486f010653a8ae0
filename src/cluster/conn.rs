//! A client connection to one peer's shard server: requests multiplexed by
//! id over one TCP stream, with a deadline per request and a bound on
//! requests in flight.
//!
//! Contract:
//! - [`Connection::call`] sends one request and waits for its response at
//!   most `CLUSTER_REQUEST_TIMEOUT_MS` ([`WireError::Timeout`]; a late
//!   response is dropped).
//! - Back-pressure: at most `CLUSTER_INFLIGHT_PER_CONN` calls are in flight;
//!   further callers wait for a slot (the wait counts against their deadline).
//! - A bad frame or a closed stream fails every call in flight with
//!   [`WireError::Closed`] and every later call at once; the owner reconnects.

use super::proto::{Request, Response};
use super::wire::{Frame, FrameCodec, WireError};
use crate::constants::{
    CLUSTER_CONNECT_TIMEOUT_MS, CLUSTER_INFLIGHT_PER_CONN, CLUSTER_REQUEST_TIMEOUT_MS,
};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Frame>>>>;

pub struct Connection {
    peer: SocketAddr,
    out: mpsc::Sender<Frame>,
    waiters: Waiters,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    timeout: Duration,
}

impl Connection {
    /// Connect to `peer` (within `CLUSTER_CONNECT_TIMEOUT_MS`).
    pub async fn connect(peer: SocketAddr) -> Result<Connection, WireError> {
        let ms = CLUSTER_CONNECT_TIMEOUT_MS;
        let stream = tokio::time::timeout(Duration::from_millis(ms), TcpStream::connect(peer))
            .await
            .map_err(|_| WireError::Timeout(ms))??;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel::<Frame>(CLUSTER_INFLIGHT_PER_CONN);
        let mut sink = FramedWrite::new(wr, FrameCodec::default());
        let c2 = closed.clone();
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if sink.send(f).await.is_err() {
                    c2.store(true, Ordering::Release);
                    break;
                }
            }
        });
        let mut source = FramedRead::new(rd, FrameCodec::default());
        let (w2, c3) = (waiters.clone(), closed.clone());
        tokio::spawn(async move {
            while let Some(Ok(f)) = source.next().await {
                let tx = w2.lock().expect("waiters").remove(&f.id);
                if let Some(tx) = tx {
                    let _ = tx.send(f);
                }
            }
            c3.store(true, Ordering::Release);
            w2.lock().expect("waiters").clear(); // fails every call in flight
        });
        Ok(Connection {
            peer,
            out: tx,
            waiters,
            slots: Arc::new(Semaphore::new(CLUSTER_INFLIGHT_PER_CONN)),
            next_id: AtomicU64::new(1),
            closed,
            timeout: Duration::from_millis(CLUSTER_REQUEST_TIMEOUT_MS),
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        CLUSTER_INFLIGHT_PER_CONN - self.slots.available_permits()
    }

    /// Send `req` and wait for its response.
    pub async fn call(&self, req: Request<Bytes>) -> Result<Response<Bytes>, WireError> {
        let ms = self.timeout.as_millis() as u64;
        tokio::time::timeout(self.timeout, self.call_inner(req))
            .await
            .map_err(|_| WireError::Timeout(ms))?
    }

    async fn call_inner(&self, req: Request<Bytes>) -> Result<Response<Bytes>, WireError> {
        if self.is_closed() {
            return Err(WireError::Closed);
        }
        let _slot = self.slots.acquire().await.map_err(|_| WireError::Closed)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame::request(id, req)?;
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").insert(id, tx);
        let guard = Unregister(&self.waiters, id);
        self.out.send(frame).await.map_err(|_| WireError::Closed)?;
        let f = rx.await.map_err(|_| WireError::Closed)?;
        drop(guard);
        f.into_response()
    }
}

/// Removes a waiter whose call ended early (timeout, error).
struct Unregister<'a>(&'a Waiters, u64);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.lock().expect("waiters").remove(&self.1);
    }
}

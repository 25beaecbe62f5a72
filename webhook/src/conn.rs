//! Client connections: how long a client may take and how many may be open.
//!
//! The API server is the only legitimate client, but the port is reachable by
//! anything in the cluster, so a slow or stalled client must not hold a
//! connection, a task or memory for long. hyper has no idle timeout of its own
//! and its header-read timeout also runs while an HTTP/1 connection waits for
//! the next request, so both are kept here: each connection's [`Activity`] is
//! updated by its reader and its requests, and a watchdog asks
//! [`Activity::verdict`] when to look again and whether to close.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bounds on client connections (flags of the webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The TLS handshake, a request's headers (counted from their first byte)
    /// and a request's body must each arrive within this.
    pub read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// AdmissionReviews read and answered at once; with the body limit this
    /// bounds the memory requests can take.
    pub max_concurrent_reviews: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_concurrent_reviews: 64,
        }
    }
}

/// What the watchdog should do with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it; look again at this instant.
    Open { check_at: Instant },
    /// Close it, for this reason (a metric label).
    Close(&'static str),
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// When the last request finished (or the connection opened).
    idle_since: Instant,
    /// When bytes of a next HTTP/1 request arrived while none was in flight.
    head_started: Option<Instant>,
}

/// What one connection has been doing, shared by its reader, its requests and
/// its watchdog.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    /// Wakes the watchdog when its next deadline may have moved earlier (a
    /// head started) or the connection went idle.
    changed: tokio::sync::Notify,
}

impl Activity {
    pub fn new(now: Instant) -> Activity {
        Activity { state: Mutex::new(State { in_flight: 0, idle_since: now, head_started: None }), changed: tokio::sync::Notify::new() }
    }

    /// Resolves when the activity changed in a way that moves the watchdog's
    /// deadline (a wake-up sent while nobody waited is kept for the next wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain fields, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived from the client.
    pub fn bytes_read(&self, now: Instant) {
        let mut s = self.state();
        if s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(now);
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A request reached the handler; the guard marks its end when dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut s = self.state();
        s.in_flight += 1;
        s.head_started = None;
        RequestGuard { activity: Arc::clone(self) }
    }

    fn request_finished(&self, now: Instant) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = now;
            s.head_started = None;
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Whether to keep the connection and when to look again. A request in
    /// flight bounds its own body read, so the connection stays open while it
    /// runs. On HTTP/2, frames such as PINGs arrive between requests, so only
    /// the idle rule applies; a stalled HEADERS frame counts as idle time.
    pub fn verdict(&self, now: Instant, limits: &ConnectionLimits, http2: bool) -> Verdict {
        let s = self.state();
        if s.in_flight > 0 {
            return Verdict::Open { check_at: now + limits.read_timeout };
        }
        if let (false, Some(started)) = (http2, s.head_started) {
            let deadline = started + limits.read_timeout;
            return if now >= deadline { Verdict::Close("read-timeout") } else { Verdict::Open { check_at: deadline } };
        }
        let deadline = s.idle_since + limits.idle_timeout;
        if now >= deadline {
            Verdict::Close("idle-timeout")
        } else {
            Verdict::Open { check_at: deadline }
        }
    }
}

/// Marks the end of a request when dropped (also when its handler is cancelled).
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.request_finished(Instant::now());
    }
}

/// A stream that tells its [`Activity`] when bytes arrive.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4,
        max_concurrent_reviews: 2,
    };

    #[test]
    fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        assert_eq!(a.verdict(t0, &LIMITS, false), Verdict::Open { check_at: t0 + LIMITS.idle_timeout });
        assert_eq!(a.verdict(t0 + LIMITS.idle_timeout, &LIMITS, false), Verdict::Close("idle-timeout"));
        assert_eq!(a.verdict(t0 + LIMITS.idle_timeout, &LIMITS, true), Verdict::Close("idle-timeout"));
    }

    #[test]
    fn http1_headers_must_arrive_within_the_read_timeout_of_their_first_byte() {
        let t0 = Instant::now();
        let a = Arc::new(Activity::new(t0));
        let t1 = t0 + Duration::from_secs(30);
        a.bytes_read(t1);
        a.bytes_read(t1 + Duration::from_secs(5)); // more trickling does not extend it
        assert_eq!(a.verdict(t1, &LIMITS, false), Verdict::Open { check_at: t1 + LIMITS.read_timeout });
        assert_eq!(a.verdict(t1 + LIMITS.read_timeout, &LIMITS, false), Verdict::Close("read-timeout"));
        // On HTTP/2 the same bytes (a PING, say) do not start the header clock.
        assert_eq!(a.verdict(t1 + LIMITS.read_timeout, &LIMITS, true), Verdict::Open { check_at: t0 + LIMITS.idle_timeout });
    }

    #[test]
    fn a_request_in_flight_keeps_the_connection_and_its_end_restarts_the_idle_clock() {
        // The connection opened well in the past, so the restart is visible.
        let Some(t0) = Instant::now().checked_sub(Duration::from_secs(1000)) else { return };
        let a = Arc::new(Activity::new(t0));
        a.bytes_read(t0);
        let guard = a.request_started();
        let late = t0 + Duration::from_secs(600);
        assert_eq!(a.verdict(late, &LIMITS, false), Verdict::Open { check_at: late + LIMITS.read_timeout });
        drop(guard);
        let Verdict::Open { check_at } = a.verdict(Instant::now(), &LIMITS, false) else { panic!("open after a request") };
        assert!(check_at > t0 + LIMITS.idle_timeout, "the idle clock restarted when the request ended");
    }
}

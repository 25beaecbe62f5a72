//! Bounded resources on the downstream side (the connections apps and peers
//! open to the proxy): an idle timeout, a request-head read timeout, limits
//! on a request head's size and header count, a cap on each listener's open
//! connections, and read buffers that are let go when a connection idles.
//! Each limit that triggers is counted (`revmesh_proxy_downstream_*`, with
//! Envoy's stat names). The defaults are Envoy's, except the head read
//! timeout, which Envoy leaves off and which is 10 s here.
//!
//! Flags and defaults are described in docs/sidecar.md ("Hostile input").

use crate::http1::HeadLimits;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Flags of `sidecar run` that bound what clients can hold.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Close a client connection that has moved no bytes either way for this
    /// long (Envoy's idle_timeout, 1 h); 0 turns it off.
    #[arg(long, default_value = "60m", value_parser = revmesh_duration::parse)]
    pub idle_timeout: Duration,
    /// Time a client has to send a whole request head once its first byte
    /// has arrived; it is then answered 408 and closed (Envoy's
    /// request_headers_timeout, which Envoy leaves off); 0 turns it off.
    #[arg(long, default_value = "10s", value_parser = revmesh_duration::parse)]
    pub request_headers_timeout: Duration,
    /// Largest request head (request line and header fields) in KiB; a larger
    /// one is answered 431 (Envoy's max_request_headers_kb, 60).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub max_request_headers_kb: u32,
    /// Most header fields in a request head; more is answered 431 (Envoy's
    /// max_headers_count, 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub max_request_headers: u32,
    /// Open client connections per listener (inbound and outbound each); a
    /// connection past it is closed at once and counted in
    /// revmesh_proxy_downstream_cx_overflow_total.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_downstream_connections: u32,
}

/// The limits in force, as the listeners read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub idle_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub head: HeadLimits,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Some(Duration::from_secs(3600)),
            request_headers_timeout: Some(Duration::from_secs(10)),
            head: HeadLimits { max_bytes: 60 * 1024, max_headers: 100 },
            max_connections: 16384,
        }
    }
}

impl From<&LimitArgs> for Limits {
    fn from(a: &LimitArgs) -> Self {
        let on = |d: Duration| (!d.is_zero()).then_some(d);
        Limits {
            idle_timeout: on(a.idle_timeout),
            request_headers_timeout: on(a.request_headers_timeout),
            head: HeadLimits { max_bytes: a.max_request_headers_kb as usize * 1024, max_headers: a.max_request_headers as usize },
            max_connections: a.max_downstream_connections as usize,
        }
    }
}

impl Limits {
    /// Applies the head limits and the head read timeout to hyper's HTTP/1
    /// server. hyper starts that timer whenever it waits for a head, so on
    /// the connections hyper serves, a keep-alive connection waiting for its
    /// next request is closed after it too (and without a 408).
    pub fn hyper_http1(&self, builder: &mut hyper::server::conn::http1::Builder) {
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(self.request_headers_timeout).max_headers(self.head.max_headers).max_header_size(self.head.max_bytes);
    }

    /// Both of the above on hyper's either-version server. It has no
    /// head size of its own for HTTP/1: its read buffer is capped at the
    /// head size instead (431 when a head does not fit; bodies are read in
    /// pieces of at most that).
    pub fn hyper_auto<E>(&self, builder: &mut hyper_util::server::conn::auto::Builder<E>) {
        builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(self.request_headers_timeout).max_headers(self.head.max_headers).max_buf_size(self.head.max_bytes.max(8192));
        builder.http2().max_header_list_size(self.h2_header_list_size());
    }

    /// HTTP/2 bounds a head by the size of its decoded header list.
    pub fn hyper_http2<E>(&self, builder: &mut hyper::server::conn::http2::Builder<E>) {
        builder.max_header_list_size(self.h2_header_list_size());
    }

    /// The head size limit as HTTP/2's header list size.
    pub fn h2_header_list_size(&self) -> u32 {
        u32::try_from(self.head.max_bytes).unwrap_or(u32::MAX)
    }
}

/// Which listener a connection came in on (the `listener` label).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// What the limits did on one listener.
#[derive(Clone, Debug, Default)]
pub struct ListenerStats {
    /// Client connections open now (Envoy's downstream_cx_active).
    pub active: Gauge,
    /// Connections closed at once because the listener was full.
    pub overflow: Counter,
    pub idle_timeout: Counter,
    pub header_timeout: Counter,
    /// Request heads refused with 431.
    pub headers_too_large: Counter,
}

/// The limits' metrics, per listener.
#[derive(Clone, Debug, Default)]
pub struct LimitMetrics {
    pub outbound: ListenerStats,
    pub inbound: ListenerStats,
}

impl LimitMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let active = Family::<ListenerLabel, Gauge>::default();
        registry.register("revmesh_proxy_downstream_cx_active", "Client connections open, per listener", active.clone());
        let counters = [
            ("revmesh_proxy_downstream_cx_overflow", "Client connections closed at once because the listener had --max-downstream-connections open"),
            ("revmesh_proxy_downstream_cx_idle_timeout", "Client connections closed after --idle-timeout without a byte either way"),
            ("revmesh_proxy_downstream_rq_header_timeout", "Client connections closed because a request head took longer than --request-headers-timeout"),
            ("revmesh_proxy_downstream_rq_headers_too_large", "Request heads refused with 431 (over --max-request-headers-kb or --max-request-headers)"),
        ]
        .map(|(name, help)| {
            let family = Family::<ListenerLabel, Counter>::default();
            registry.register(name, help, family.clone());
            family
        });
        let stats = |listener: &'static str| {
            let label = ListenerLabel { listener };
            let counter = |i: usize| counters[i].get_or_create(&label).clone();
            ListenerStats { active: active.get_or_create(&label).clone(), overflow: counter(0), idle_timeout: counter(1), header_timeout: counter(2), headers_too_large: counter(3) }
        };
        LimitMetrics { outbound: stats("outbound"), inbound: stats("inbound") }
    }
}

/// Holds a listener's slot for one connection while it lasts.
pub struct ActiveConnection(Gauge);

impl ActiveConnection {
    /// A slot on the listener, or None when it already has `max` connections open.
    pub fn admit(stats: &ListenerStats, max: usize) -> Option<Self> {
        if usize::try_from(stats.active.get()).unwrap_or(0) >= max {
            stats.overflow.inc();
            return None;
        }
        stats.active.inc();
        Some(ActiveConnection(stats.active.clone()))
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long a connection's read buffer is kept while its client is quiet.
/// Keep-alive clients usually send their next request within this; past
/// it, the buffer is let go, so idle connections hold none.
const KEEP_BUFFER_WHILE_QUIET: Duration = Duration::from_secs(1);
/// A buffer grown past this (a large head or body) is let go after its request.
const KEEP_CAPACITY: usize = 32 * 1024;

/// Waits for a client's next request on the HTTP/1 fast path. Its timer is
/// made once per connection and only reset when it fires, so waiting for a
/// request costs no timer registration.
pub struct ClientWait {
    timer: Pin<Box<Sleep>>,
    idle_timeout: Option<Duration>,
}

/// Far enough to never fire: the timer is parked there when nothing is due.
const PARKED: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl ClientWait {
    pub fn new(idle_timeout: Option<Duration>) -> Self {
        ClientWait { timer: Box::pin(tokio::time::sleep(KEEP_BUFFER_WHILE_QUIET)), idle_timeout }
    }

    /// Waits until the client sends more (or closes): true. False when it
    /// stayed quiet for the idle timeout. `buf` (empty) is let go once the
    /// client has been quiet for a moment.
    pub async fn next_request(&mut self, tcp: &TcpStream, buf: &mut Vec<u8>) -> bool {
        let since = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = tcp.readable() => return true,
                _ = self.timer.as_mut() => {}
            }
            // The timer may have fired during the last exchange; only the
            // time since this wait began counts.
            let now = Instant::now();
            let quiet = now - since;
            if self.idle_timeout.is_some_and(|idle| quiet >= idle) {
                return false;
            }
            if quiet >= KEEP_BUFFER_WHILE_QUIET && buf.is_empty() {
                *buf = Vec::new();
            }
            let next = if buf.capacity() > 0 { since + KEEP_BUFFER_WHILE_QUIET } else { self.idle_timeout.map_or(now + PARKED, |idle| since + idle) };
            self.timer.as_mut().reset(next.max(now + Duration::from_millis(1)));
        }
    }
}

/// How long a refused client's further bytes are read and dropped before
/// its connection is closed (nginx's lingering close, 5 s there).
const LINGER: Duration = Duration::from_secs(2);
/// At most this much is read while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// Closes a connection the proxy has just answered with a refusal (408,
/// 431, 400) while the client may still be sending: after a FIN, what
/// arrives is read and dropped for a moment. Closed with unread bytes, the
/// socket would send a reset, and a reset can destroy the answer before the
/// client has read it.
pub async fn linger_close(tcp: &mut TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    // On the heap: in the connection's future it would make every
    // connection's task 4 KiB larger for a rare path.
    let mut sink = vec![0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n @ 1..) = tcp.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// `work`'s output, or None if `deadline` came first (no deadline: it waits).
pub async fn within<F: std::future::Future>(deadline: Option<Instant>, work: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
        None => Some(work.await),
    }
}

/// Lets go of a read buffer grown for a large message once it is empty
/// (or holds only a little of the next request).
pub fn shrink(buf: &mut Vec<u8>, keep: usize) {
    if buf.capacity() > KEEP_CAPACITY {
        if buf.is_empty() {
            *buf = Vec::new();
        } else if buf.len() <= keep {
            buf.shrink_to(keep);
        }
    }
}

/// An I/O stream that counts the bytes moving either way, so that a watcher
/// beside the server driving it (hyper or h2) can tell an idle connection.
pub struct Watched<T> {
    inner: T,
    traffic: Arc<Traffic>,
}

/// Bytes read and written so far, and how many had been read at the last write.
#[derive(Debug, Default)]
pub struct Traffic {
    read: AtomicU64,
    written: AtomicU64,
    read_at_last_write: AtomicU64,
}

impl Traffic {
    fn total(&self) -> u64 {
        self.read.load(Ordering::Relaxed).wrapping_add(self.written.load(Ordering::Relaxed))
    }

    /// Whether the client has sent bytes since the proxy last wrote to it
    /// (a request was begun, rather than the connection idling between two).
    pub fn request_begun(&self) -> bool {
        self.read.load(Ordering::Relaxed) > self.read_at_last_write.load(Ordering::Relaxed)
    }

    /// Resolves once no byte has moved for `idle` (checked every quarter of
    /// it, so it resolves between `idle` and 1.25 × `idle` into the quiet);
    /// never with `None`.
    pub async fn idle(&self, idle: Option<Duration>) {
        let Some(idle) = idle else { return std::future::pending().await };
        let step = idle / 4;
        let mut seen = self.total();
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            let now = self.total();
            quiet = if now == seen { quiet + step } else { Duration::ZERO };
            seen = now;
            if quiet >= idle {
                return;
            }
        }
    }
}

impl<T> Watched<T> {
    pub fn new(inner: T) -> (Self, Arc<Traffic>) {
        let traffic = Arc::new(Traffic::default());
        (Watched { inner, traffic: Arc::clone(&traffic) }, traffic)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.traffic.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.wrote(*n);
        }
        polled
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.wrote(*n);
        }
        polled
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

impl<T> Watched<T> {
    fn wrote(&self, n: usize) {
        if n > 0 {
            self.traffic.written.fetch_add(n as u64, Ordering::Relaxed);
            self.traffic.read_at_last_write.store(self.traffic.read.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Copies bytes both ways between a client (`client`) and where it is
/// proxied to (`upstream`) until either closes, or until no byte has moved
/// for the idle timeout (counted; Envoy's TCP proxy idle_timeout). Returns
/// the bytes from the client and to it, also when the idle timeout ended it.
pub async fn copy_until_idle<A, B>(client: &mut A, upstream: &mut B, limits: &Limits, stats: &ListenerStats) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut client, traffic) = Watched::new(client);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, upstream) => copied,
        _ = traffic.idle(limits.idle_timeout) => {
            stats.idle_timeout.inc();
            Ok((traffic.read.load(Ordering::Relaxed), traffic.written.load(Ordering::Relaxed)))
        }
    }
}

/// hyper's error, as [`serve_watched`] reads it.
pub fn hyper_error(e: &hyper::Error) -> Option<&hyper::Error> {
    Some(e)
}

/// hyper's error inside the boxed one of hyper-util's server.
// `&Box`: what hyper-util's server fails with is the box itself.
#[allow(clippy::borrowed_box)]
pub fn boxed_hyper_error(e: &Box<dyn std::error::Error + Send + Sync>) -> Option<&hyper::Error> {
    e.downcast_ref()
}

/// Serves one connection with a hyper server future `serve`, closing it
/// once `traffic` shows it idle for `limits.idle_timeout`, and counts why it
/// ended: idleness, hyper's head read timeout, or a head hyper refused as
/// too large (with a 431).
/// (`as_hyper` finds hyper's error in what `serve` fails with).
pub async fn serve_watched<F, E>(serve: F, traffic: &Traffic, limits: &Limits, stats: &ListenerStats, as_hyper: impl FnOnce(&E) -> Option<&hyper::Error>)
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::select! {
        served = serve => match served.as_ref().map_err(as_hyper) {
            // hyper's timer also runs while a keep-alive connection waits
            // for its next request: that is idleness.
            Err(Some(e)) if e.is_timeout() && traffic.request_begun() => {
                stats.header_timeout.inc();
            }
            Err(Some(e)) if e.is_timeout() => {
                stats.idle_timeout.inc();
            }
            Err(Some(e)) if e.is_parse_too_large() => {
                stats.headers_too_large.inc();
            }
            _ => {}
        },
        _ = traffic.idle(limits.idle_timeout) => {
            stats.idle_timeout.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, parse_request_limited, HeadError};
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn flag_defaults_are_envoys_with_a_head_timeout() {
        let flags = Flags::try_parse_from(["run"]).unwrap();
        assert_eq!(Limits::from(&flags.limits), Limits::default());
        let flags = Flags::try_parse_from(["run", "--idle-timeout", "0", "--request-headers-timeout", "500ms", "--max-request-headers-kb", "8", "--max-request-headers", "300", "--max-downstream-connections", "10"]).unwrap();
        let limits = Limits::from(&flags.limits);
        assert_eq!(limits, Limits { idle_timeout: None, request_headers_timeout: Some(Duration::from_millis(500)), head: HeadLimits { max_bytes: 8192, max_headers: 300 }, max_connections: 10 });
        for bad in [&["--max-request-headers-kb", "0"][..], &["--max-downstream-connections", "0"], &["--idle-timeout", "1.5s"]] {
            assert!(Flags::try_parse_from(["run"].iter().chain(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_heads_over_the_configured_limits_are_too_large() {
        let head = |headers: usize, value: usize| format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", format!("X-A: {}\r\n", "v".repeat(value)).repeat(headers));
        let small = HeadLimits { max_bytes: 1024, max_headers: 8 };
        assert!(parse_request_limited(head(7, 10).as_bytes(), &small).unwrap().is_some(), "8 headers with Host");
        assert_eq!(parse_request_limited(head(8, 10).as_bytes(), &small).unwrap_err(), HeadError::TooLarge);
        assert_eq!(parse_request_limited(head(2, 1000).as_bytes(), &small).unwrap_err(), HeadError::TooLarge);
        // Incomplete but already over: refused without waiting for the rest.
        let partial = head(2, 1000);
        assert_eq!(parse_request_limited(&partial.as_bytes()[..1100], &small).unwrap_err(), HeadError::TooLarge);
        // A limit above the stack array parses on the heap.
        let many = HeadLimits { max_bytes: 1 << 20, max_headers: 300 };
        let parsed = parse_request_limited(head(299, 1).as_bytes(), &many).unwrap().unwrap();
        assert_eq!(parsed.headers.len(), 300);
        assert_eq!(parse_request_limited(head(300, 1).as_bytes(), &many).unwrap_err(), HeadError::TooLarge);
        assert_eq!(parse_request(head(100, 1).as_bytes()).unwrap_err(), HeadError::TooLarge, "the default is 100 headers");
    }

    #[test]
    fn a_listener_admits_up_to_its_cap_and_counts_the_rest() {
        let stats = ListenerStats::default();
        let held: Vec<_> = (0..3).map(|_| ActiveConnection::admit(&stats, 3).expect("under the cap")).collect();
        assert!(ActiveConnection::admit(&stats, 3).is_none());
        assert_eq!((stats.active.get(), stats.overflow.get()), (3, 1));
        drop(held);
        assert_eq!(stats.active.get(), 0);
        assert!(ActiveConnection::admit(&stats, 3).is_some());
    }

    #[test]
    fn grown_buffers_are_let_go() {
        let mut buf = Vec::with_capacity(1 << 20);
        shrink(&mut buf, 16 * 1024);
        assert_eq!(buf.capacity(), 0);
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        shrink(&mut buf, 16 * 1024);
        assert!(buf.capacity() <= 16 * 1024 && buf == b"GET / HTTP/1.1\r\n");
        let mut small = Vec::with_capacity(16 * 1024);
        shrink(&mut small, 16 * 1024);
        assert_eq!(small.capacity(), 16 * 1024, "a usual buffer stays");
    }

    #[tokio::test]
    async fn a_quiet_tcp_relay_ends_at_the_idle_timeout_with_its_byte_counts() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut client_end) = tokio::io::duplex(1024);
        let (mut upstream, mut upstream_end) = tokio::io::duplex(1024);
        let limits = Limits { idle_timeout: Some(Duration::from_millis(300)), ..Limits::default() };
        let stats = ListenerStats::default();
        let counted = stats.clone();
        let relay = tokio::spawn(async move { copy_until_idle(&mut client_end, &mut upstream_end, &limits, &stats).await });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        upstream.read_exact(&mut got).await.unwrap();
        upstream.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        let copied = tokio::time::timeout(Duration::from_secs(10), relay).await.expect("ends when idle").unwrap().unwrap();
        assert_eq!((copied, counted.idle_timeout.get()), ((4, 5), 1));
    }

    #[tokio::test]
    async fn quiet_streams_are_idle_after_the_timeout_and_busy_ones_are_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut watched, traffic) = Watched::new(a);
        let idle = tokio::spawn({
            let traffic = Arc::clone(&traffic);
            async move { traffic.idle(Some(Duration::from_millis(400))).await }
        });
        // A byte each way every 150 ms for 750 ms keeps it from idling.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            b.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            watched.read_exact(&mut one).await.unwrap();
            assert!(traffic.request_begun());
            watched.write_all(b"y").await.unwrap();
            assert!(!traffic.request_begun(), "answered");
            assert!(!idle.is_finished());
        }
        let quiet_since = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), idle).await.expect("idle within 10 s").unwrap();
        assert!(quiet_since.elapsed() >= Duration::from_millis(400) - Duration::from_millis(150), "{:?}", quiet_since.elapsed());
    }
}

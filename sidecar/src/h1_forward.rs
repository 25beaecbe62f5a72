//! The outbound HTTP/1 fast path (heads and framing in [`crate::http1`]).
//!
//! One task per app connection reads a request, forwards it on a pooled
//! plaintext connection to the chosen endpoint, and copies the answer back:
//! no task, channel or `http` types per request, and usually one read and one
//! write on each side. Routing, balancing, timeouts, retries, outlier
//! detection and metrics are the general path's ([`Outbound::attempts`]).
//!
//! The general (hyper) path takes the connection over, with the bytes already
//! read, at the first request the fast path does not handle: one routed to a
//! meshed or HTTP/2 upstream, HTTP/1.0, upgrades, `Expect`, chunked uploads,
//! or a body too large to keep for retries.

use crate::config::{pick_weighted, ClusterConfig, RouteRule};
use crate::http1::{self, BodyFraming, ChunkedScanner, Framing, HeadError, HeadView, RequestHead, ResponseHead};
use crate::proxy::{cluster_service, hash_key, Failure, LocalReply, Outbound, Protocol, BLACKHOLE, PASSTHROUGH, RETRY_BUFFER};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::StatusCode;
use crate::fast_hash::FastMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Idle upstream connections older than this are not reused (servers close
/// theirs after 5 s to 75 s; an old one is likelier to be closing).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_IDLE_PER_ENDPOINT: usize = 256;
const READ_CHUNK: usize = 16 * 1024;
/// Connect timeout of passthrough traffic (it has no cluster to say).
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Idle keep-alive connections to plaintext upstreams, newest last.
#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<FastMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

/// Whether an idle connection may still carry a request: it has nothing to
/// read. Readable means the upstream closed it, reset it, or sent stray bytes.
/// (No system call unless the runtime saw it become readable.)
fn still_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

impl UpstreamPool {
    fn take(&self, endpoint: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&endpoint)?;
        while let Some((tcp, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && still_open(&tcp) {
                return Some(tcp);
            }
        }
        None
    }

    /// Sends `request` (a whole HTTP/1.1 request) to `endpoint` and reads
    /// the answer's head: on a pooled connection if there is one, and on a
    /// fresh one if that turns out closed before answering an idempotent request.
    pub(crate) async fn exchange(&self, endpoint: SocketAddr, connect_timeout: Duration, request: &[u8], head_request: bool, idempotent: bool) -> Result<Answer, String> {
        let mut pooled = self.take(endpoint);
        loop {
            let reused = pooled.is_some();
            let mut tcp = match pooled.take() {
                Some(tcp) => tcp,
                None => connect(endpoint, connect_timeout).await?,
            };
            match send_and_read_head(&mut tcp, request, head_request).await {
                Ok((buf, head)) => return Ok(Answer { endpoint, tcp, buf, head }),
                Err(e) if reused && e.nothing_received && idempotent => {
                    tracing::debug!(%endpoint, error = %e.message, "pooled connection closed; retrying on a new one");
                }
                Err(e) => return Err(e.message),
            }
        }
    }

    fn put(&self, endpoint: SocketAddr, tcp: TcpStream) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let list = idle.entry(endpoint).or_default();
        // The oldest are the first to go: by age, then past the cap.
        let now = Instant::now();
        let stale = list.iter().take_while(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT).count();
        let over = (list.len() - stale + 1).saturating_sub(MAX_IDLE_PER_ENDPOINT);
        list.drain(..stale + over);
        list.push((tcp, now));
    }
}

/// A connection handed to the general path, with the bytes the fast path
/// read ahead replayed first.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Prefixed { prefix, at: 0, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
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

/// An upstream's answer to one attempt: its head read, its body not yet.
pub(crate) struct Answer {
    endpoint: SocketAddr,
    tcp: TcpStream,
    buf: Vec<u8>,
    pub(crate) head: ResponseHead,
}

impl Answer {
    /// The answer as `http` types (for an HTTP/2 hop). A body that arrived
    /// with the head is handed over whole; the rest streams from the
    /// connection, which goes back to `pool` once its body has ended cleanly.
    pub(crate) fn into_response(self, pool: &Arc<UpstreamPool>) -> hyper::Response<crate::proxy::Body> {
        let Answer { endpoint, tcp, buf, head } = self;
        let mut response = hyper::Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        *response.headers_mut() = http1::response_header_map(&buf, &head);
        let arrived = buf.len() - head.head_len;
        let give_back = |tcp| {
            if head.reusable {
                pool.put(endpoint, tcp);
            }
        };
        let body = match head.framing {
            Framing::Empty => {
                if arrived == 0 {
                    give_back(tcp);
                }
                return response;
            }
            Framing::Length(n) if arrived as u64 >= n => {
                if arrived as u64 == n {
                    give_back(tcp);
                }
                // The buffer becomes the body: no copy.
                Full::new(Bytes::from(buf).slice(head.head_len..head.head_len + n as usize)).map_err(|never| match never {}).boxed_unsync()
            }
            framing => {
                let state = match framing {
                    Framing::Length(n) => BodyState::Length(n),
                    Framing::Chunked => BodyState::Chunked(ChunkedScanner::default()),
                    _ => BodyState::UntilClose,
                };
                let pending = Bytes::from(buf).slice(head.head_len..);
                let back = head.reusable.then(|| (Arc::clone(pool), endpoint));
                UpstreamBody { tcp: Some(tcp), pending, state, back }.map_err(|e| Box::new(e) as crate::proxy::BoxError).boxed_unsync()
            }
        };
        *response.body_mut() = body;
        response
    }
}

enum BodyState {
    /// Bytes of the body still to come.
    Length(u64),
    Chunked(ChunkedScanner),
    UntilClose,
    Done,
}

/// A response body read from an upstream HTTP/1 connection as it arrives.
struct UpstreamBody {
    tcp: Option<TcpStream>,
    /// Bytes read with the head, delivered first.
    pending: Bytes,
    state: BodyState,
    /// Where the connection goes back when the body ends with nothing after it.
    back: Option<(Arc<UpstreamPool>, SocketAddr)>,
}

impl UpstreamBody {
    fn finish(&mut self, clean: bool) {
        self.state = BodyState::Done;
        if let (true, Some((pool, endpoint)), Some(tcp)) = (clean, self.back.take(), self.tcp.take()) {
            pool.put(endpoint, tcp);
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if matches!(this.state, BodyState::Done) {
                return Poll::Ready(None);
            }
            let chunk = if this.pending.is_empty() {
                let Some(tcp) = this.tcp.as_mut() else { return Poll::Ready(None) };
                let mut space = vec![0u8; READ_CHUNK];
                let mut read = ReadBuf::new(&mut space);
                match Pin::new(tcp).poll_read(cx, &mut read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) => {}
                }
                let n = read.filled().len();
                if n == 0 {
                    if matches!(this.state, BodyState::UntilClose) {
                        this.finish(false);
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed mid-body"))));
                }
                space.truncate(n);
                Bytes::from(space)
            } else {
                std::mem::take(&mut this.pending)
            };
            let data = match &mut this.state {
                BodyState::Length(left) => {
                    let take = chunk.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish(take == chunk.len());
                    }
                    chunk.slice(..take)
                }
                BodyState::UntilClose => chunk,
                BodyState::Chunked(scanner) => {
                    let mut spans = Vec::new();
                    let end = scanner.scan_data(&chunk, |r| spans.push(r)).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let data = match spans.as_slice() {
                        [] => Bytes::new(),
                        [one] => chunk.slice(one.clone()),
                        many => Bytes::from(many.iter().flat_map(|r| chunk[r.clone()].iter().copied()).collect::<Vec<u8>>()),
                    };
                    if let Some(end) = end {
                        this.finish(end == chunk.len());
                    }
                    data
                }
                BodyState::Done => return Poll::Ready(None),
            };
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }
}

/// An upstream's answer: from a plaintext HTTP/1 endpoint, or from a peer
/// proxy over HTTP/2 inside mTLS.
enum Reply {
    Http1(Answer),
    Http2(hyper::Response<h2::RecvStream>),
}

/// Sends the app's request (head and whole body in `request`) to a peer
/// proxy as HTTP/2, the app's Host as its authority.
async fn to_peer_proxy(mut sender: h2::client::SendRequest<Bytes>, request: &[u8], head: &RequestHead) -> Result<hyper::Response<h2::RecvStream>, String> {
    let host = head.host(request);
    let uri = format!("http://{host}{}", head.target(request)).parse::<hyper::Uri>().map_err(|_| format!("no request URI from host {host:?} and path {:?}", head.target(request)))?;
    let method = hyper::Method::from_bytes(head.method(request)).map_err(|_| "bad request method".to_string())?;
    let mut upstream = hyper::Request::new(());
    *upstream.method_mut() = method;
    *upstream.uri_mut() = uri;
    *upstream.version_mut() = hyper::Version::HTTP_2;
    *upstream.headers_mut() = http1::request_header_map(request, head);
    let body = &request[head.head_len..];
    let (answer, mut send) = sender.send_request(upstream, body.is_empty()).map_err(|e| e.to_string())?;
    if !body.is_empty() {
        // Bounded: the fast path takes no body over RETRY_BUFFER.
        send.send_data(Bytes::copy_from_slice(body), true).map_err(|e| e.to_string())?;
    }
    answer.await.map_err(|e| e.to_string())
}

/// Writes a peer proxy's HTTP/2 answer to the app as HTTP/1.1. A body that
/// is complete after its first frame goes with the head in one write, with
/// its length; otherwise the peer's Content-Length is kept, or the body is
/// chunked.
async fn relay_http2(app: &mut TcpStream, response: hyper::Response<h2::RecvStream>, head_request: bool, close: bool) -> Next {
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    let mut out = Vec::with_capacity(2048);
    if head_request || status < 200 || status == 204 || status == 304 {
        http1::write_response_head_from(&mut out, status, &parts.headers, BodyFraming::None, close);
        return finish_write(app, &out, close).await;
    }
    let (first, ended) = if body.is_end_stream() {
        (Bytes::new(), true)
    } else {
        match next_data(&mut body).await {
            Ok(Some(data)) => {
                let ended = body.is_end_stream();
                (data, ended)
            }
            Ok(None) => (Bytes::new(), true),
            Err(()) => return Next::Close,
        }
    };
    if ended {
        http1::write_response_head_from(&mut out, status, &parts.headers, BodyFraming::Length(first.len() as u64), close);
        out.extend_from_slice(&first);
        return finish_write(app, &out, close).await;
    }
    let length = parts.headers.get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let chunked = length.is_none();
    http1::write_response_head_from(&mut out, status, &parts.headers, length.map_or(BodyFraming::Chunked, BodyFraming::Length), close);
    let mut data = first;
    loop {
        if !data.is_empty() {
            if chunked {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&data);
            }
        }
        if body.is_end_stream() {
            break;
        }
        if app.write_all(&out).await.is_err() {
            return Next::Close;
        }
        out.clear();
        data = match next_data(&mut body).await {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // The peer reset the stream: the app sees the body cut short.
            Err(()) => return Next::Close,
        };
    }
    if chunked {
        // Trailers (gRPC's status, for one) can only ride on a chunked body;
        // with a length they are dropped, as HTTP/1.1 leaves no room for them.
        let trailers = match body.trailers().await {
            Ok(trailers) => trailers,
            Err(e) => {
                tracing::debug!(error = %e, "a peer proxy's response trailers failed");
                return Next::Close;
            }
        };
        http1::write_last_chunk(&mut out, trailers.as_ref());
    }
    finish_write(app, &out, close).await
}

/// The next data of a peer's answer; None at its end.
async fn next_data(body: &mut h2::RecvStream) -> Result<Option<Bytes>, ()> {
    crate::mesh_h2::next_data(body).await.map_err(|e| tracing::debug!(error = %e, "a peer proxy's response body failed"))
}

async fn finish_write(app: &mut TcpStream, out: &[u8], close: bool) -> Next {
    match app.write_all(out).await {
        Ok(()) if !close => Next::KeepGoing,
        _ => Next::Close,
    }
}

/// What the app's connection does after an exchange.
enum Next {
    KeepGoing,
    Close,
    /// The request is for the general path; nothing of it was consumed.
    Handoff,
}

/// Why an attempt got no answer, and whether it may be repeated on a fresh
/// connection (a reused one that the upstream had closed).
struct AttemptError {
    message: String,
    nothing_received: bool,
}

async fn read_more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_CHUNK);
    }
    io.read_buf(buf).await
}

/// Sends `request` and reads the response head (skipping 1xx informational
/// answers, which the app did not ask for: it sent no `Expect`).
async fn send_and_read_head(tcp: &mut TcpStream, request: &[u8], head_request: bool) -> Result<(Vec<u8>, ResponseHead), AttemptError> {
    let failed = |message: String, nothing_received| AttemptError { message, nothing_received };
    tcp.write_all(request).await.map_err(|e| failed(format!("sending the request: {e}"), true))?;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        match http1::parse_response(&buf, head_request) {
            Ok(Some(head)) if head.status == 101 => return Err(failed("switched protocols unasked".into(), false)),
            Ok(Some(head)) if head.status < 200 => {
                buf.drain(..head.head_len);
                continue;
            }
            Ok(Some(head)) => return Ok((buf, head)),
            Ok(None) => {}
            Err(e) => return Err(failed(e.to_string(), false)),
        }
        match read_more(tcp, &mut buf).await {
            Ok(0) => return Err(failed("connection closed before a response".into(), buf.is_empty())),
            Ok(_) => {}
            Err(e) => return Err(failed(format!("reading the response: {e}"), buf.is_empty())),
        }
    }
}

async fn connect(endpoint: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!("connect: no answer within {timeout:?}")),
    }
}

/// Copies exactly `left` body bytes from the upstream to the app.
async fn copy_length(up: &mut TcpStream, app: &mut TcpStream, mut left: u64) -> io::Result<()> {
    let mut chunk = vec![0u8; READ_CHUNK.min(usize::try_from(left).unwrap_or(READ_CHUNK))];
    while left > 0 {
        let want = chunk.len().min(usize::try_from(left).unwrap_or(chunk.len()));
        let n = up.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed mid-body"));
        }
        app.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Copies a chunked body from the upstream to the app until its end; true
/// if the upstream sent nothing past it.
async fn copy_chunked(up: &mut TcpStream, app: &mut TcpStream, mut scanner: ChunkedScanner) -> io::Result<bool> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = up.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed mid-body"));
        }
        let end = scanner.scan(&chunk[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        app.write_all(&chunk[..end.unwrap_or(n)]).await?;
        if let Some(end) = end {
            return Ok(end == n);
        }
    }
}

impl Outbound {
    /// Serves an app's HTTP/1 connection on the fast path, handing it to the
    /// general path at the first request this path does not handle.
    pub(crate) async fn serve_http1(self: &Arc<Self>, mut tcp: TcpStream, destination: SocketAddr) {
        let limits = &self.limits;
        let stats = &self.metrics.limits.outbound;
        let mut buf: Vec<u8> = Vec::new();
        let mut wait = crate::limits::ClientWait::new(limits.idle_timeout);
        loop {
            if buf.is_empty() && !wait.next_request(&tcp, &mut buf).await {
                stats.idle_timeout.inc();
                return;
            }
            // The head read timeout runs from a head's first bytes; the
            // timer is made only for a head that does not come whole.
            let mut head_deadline = None;
            let head = loop {
                match http1::parse_request_limited(&buf, &limits.head) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(e) => return self.refuse(&mut tcp, &e).await,
                }
                let deadline = *head_deadline.get_or_insert_with(|| limits.request_headers_timeout.map(|t| tokio::time::Instant::now() + t));
                match crate::limits::within(deadline, read_more(&mut tcp, &mut buf)).await {
                    Some(Ok(0) | Err(_)) => return,
                    Some(Ok(_)) => {}
                    None => {
                        stats.header_timeout.inc();
                        return self.refuse_slow_head(&mut tcp).await;
                    }
                }
            };
            if head.method(&buf) == b"CONNECT" {
                // No route allows CONNECT (Envoy's answer is the same 404); the
                // connection closes, as tunnel bytes may follow.
                let mut out = Vec::new();
                http1::write_local_response(&mut out, 404, "no route allows CONNECT\n", true);
                let _ = tcp.write_all(&out).await;
                let _ = tcp.shutdown().await;
                return;
            }
            let body_len = match head.framing {
                _ if head.unsupported.is_some() => None,
                Framing::Empty => Some(0),
                Framing::Length(n) if n <= RETRY_BUFFER as u64 => Some(n as usize),
                _ => None,
            };
            let Some(body_len) = body_len else {
                tracing::debug!(reason = head.unsupported.unwrap_or("large or unframed body"), "HTTP/1 connection to the general path");
                return self.handoff(buf, tcp, destination).await;
            };
            let request_len = head.head_len + body_len;
            while buf.len() < request_len {
                // A body that stops coming is idleness.
                let idle_deadline = limits.idle_timeout.map(|t| tokio::time::Instant::now() + t);
                match crate::limits::within(idle_deadline, read_more(&mut tcp, &mut buf)).await {
                    Some(Ok(0) | Err(_)) => return,
                    Some(Ok(_)) => {}
                    None => {
                        stats.idle_timeout.inc();
                        return;
                    }
                }
            }
            match self.exchange(&mut tcp, &buf[..request_len], &head, destination).await {
                Next::KeepGoing => {
                    buf.drain(..request_len);
                    // A buffer grown for a large head or body is let go.
                    crate::limits::shrink(&mut buf, READ_CHUNK);
                }
                Next::Close => {
                    let _ = tcp.shutdown().await;
                    return;
                }
                Next::Handoff => return self.handoff(buf, tcp, destination).await,
            }
        }
    }

    async fn handoff(self: &Arc<Self>, read_ahead: Vec<u8>, tcp: TcpStream, destination: SocketAddr) {
        self.serve_http(Prefixed::new(read_ahead, tcp), destination, Protocol::Http1).await
    }

    /// A head that did not come whole within the head read timeout: 408, and close.
    async fn refuse_slow_head(&self, tcp: &mut TcpStream) {
        let mut out = Vec::new();
        let timeout = self.limits.request_headers_timeout.unwrap_or_default();
        http1::write_local_response(&mut out, 408, &format!("request head not received within {timeout:?}\n"), true);
        let _ = tcp.write_all(&out).await;
        crate::limits::linger_close(tcp).await;
    }

    /// A head the proxy cannot read: say why, and close.
    async fn refuse(&self, tcp: &mut TcpStream, error: &HeadError) {
        if *error == HeadError::TooLarge {
            self.metrics.limits.outbound.headers_too_large.inc();
        }
        let mut out = Vec::new();
        http1::write_local_response(&mut out, error.request_status(), &format!("{error}\n"), true);
        let _ = tcp.write_all(&out).await;
        crate::limits::linger_close(tcp).await;
    }

    /// Routes one request (its head and whole body in `request`), forwards
    /// it, relays the answer, and records its metrics.
    async fn exchange(&self, app: &mut TcpStream, request: &[u8], head: &RequestHead, destination: SocketAddr) -> Next {
        let started = Instant::now();
        let host = head.host(request);
        let config = self.config.borrow().clone();
        let route = config.route(host, head.target(request), &HeadView { buf: request, head });
        let cluster = route.map(|r| (r, pick_weighted(&r.clusters, fastrand::u64(..)).and_then(|name| config.clusters.get(name))));
        let (answer, service) = match cluster {
            Some((route, Some(cluster))) => {
                // Plaintext HTTP/2 upstreams are the general path's; meshed
                // endpoints get HTTP/2 inside mTLS from either path.
                let plaintext_endpoints = self.mesh.is_none() || cluster.mtls.len() < cluster.endpoints.len();
                if cluster.http2 && plaintext_endpoints {
                    return Next::Handoff;
                }
                (self.forward_http1(request, head, route, cluster).await, cluster_service(&cluster.name))
            }
            Some((_, None)) => (Err(LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no cluster for this route\n")), BLACKHOLE),
            // No mesh route: pass through to where the app was going.
            None if self.captured => {
                // Boxed: a rare path, kept out of the size of every exchange's future.
                let sent = Box::pin(self.attempt(destination, PASSTHROUGH_CONNECT_TIMEOUT, request, head)).await;
                (sent.map(|(a, _)| Reply::Http1(a)).map_err(|e| LocalReply::new(StatusCode::BAD_GATEWAY, format!("upstream {destination}: {e}\n"))), PASSTHROUGH)
            }
            None => (Err(LocalReply::new(StatusCode::NOT_FOUND, format!("no route for host {host:?}\n"))), BLACKHOLE),
        };
        let close = head.close || self.drain.is_draining();
        let (code, next) = match answer {
            Ok(Reply::Http1(answer)) => (answer.head.status, self.relay(app, answer, close).await),
            Ok(Reply::Http2(response)) => (response.status().as_u16(), relay_http2(app, response, head.method(request) == b"HEAD", close).await),
            Err(local) => {
                let mut out = Vec::with_capacity(128 + local.text.len());
                http1::write_local_response(&mut out, local.status.as_u16(), &local.text, close);
                let written = app.write_all(&out).await;
                (local.status.as_u16(), if close || written.is_err() { Next::Close } else { Next::KeepGoing })
            }
        };
        self.handles.record(service, code, || self.request_labels(service, code), &self.metrics, started.elapsed().as_secs_f64() * 1000.0);
        next
    }

    async fn forward_http1(&self, request: &[u8], head: &RequestHead, route: &RouteRule, cluster: &ClusterConfig) -> Result<Reply, LocalReply> {
        let hash = HeadView { buf: request, head }.header_bytes("x-revmesh-hash-key").map_or(0, hash_key);
        self.attempts(route, cluster, hash, |endpoint, _| {
            let meshed = cluster.mtls.get(&endpoint).zip(self.mesh.as_ref());
            Ok(async move {
                match meshed {
                    Some((identity, mesh)) => {
                        let sender = self.mesh_sender(mesh, endpoint, identity, cluster.connect_timeout).await?;
                        let response = to_peer_proxy(sender, request, head).await?;
                        let code = response.status().as_u16();
                        Ok((Reply::Http2(response), code))
                    }
                    None => self.attempt(endpoint, cluster.connect_timeout, request, head).await.map(|(a, code)| (Reply::Http1(a), code)).map_err(Failure::from),
                }
            })
        })
        .await
    }

    /// One attempt on `endpoint` with the request as the app sent it.
    async fn attempt(&self, endpoint: SocketAddr, connect_timeout: Duration, request: &[u8], head: &RequestHead) -> Result<(Answer, u16), String> {
        let mut out = Vec::with_capacity(request.len() + 32);
        http1::write_request_head(&mut out, request, head, head.host(request));
        out.extend_from_slice(&request[head.head_len..]);
        let head_request = head.method(request) == b"HEAD";
        let answer = self.h1_pool.exchange(endpoint, connect_timeout, &out, head_request, head.idempotent(request)).await?;
        let status = answer.head.status;
        Ok((answer, status))
    }

    /// Writes the answer to the app: its head and the body as framed.
    async fn relay(&self, app: &mut TcpStream, answer: Answer, close: bool) -> Next {
        let Answer { endpoint, tcp: mut up, buf, head } = answer;
        let close = close || head.framing == Framing::UntilClose;
        let mut out = Vec::with_capacity(buf.len() + 32);
        http1::write_response_head(&mut out, &buf, &head, close);
        let arrived = &buf[head.head_len..];
        let finished = match head.framing {
            Framing::Empty => app.write_all(&out).await.map(|_| arrived.is_empty()),
            Framing::Length(n) => {
                let now = arrived.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                out.extend_from_slice(&arrived[..now]);
                match app.write_all(&out).await {
                    Ok(()) => copy_length(&mut up, app, n - now as u64).await.map(|_| now == arrived.len()),
                    Err(e) => Err(e),
                }
            }
            Framing::Chunked => {
                let mut scanner = ChunkedScanner::default();
                match scanner.scan(arrived) {
                    Ok(Some(end)) => {
                        out.extend_from_slice(&arrived[..end]);
                        app.write_all(&out).await.map(|_| end == arrived.len())
                    }
                    Ok(None) => {
                        out.extend_from_slice(arrived);
                        match app.write_all(&out).await {
                            Ok(()) => copy_chunked(&mut up, app, scanner).await,
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => {
                        // Nothing of the answer was written yet: the app gets a 502, as from Envoy.
                        out.clear();
                        http1::write_local_response(&mut out, 502, &format!("upstream {endpoint}: {e}\n"), true);
                        let _ = app.write_all(&out).await;
                        Err(io::Error::new(io::ErrorKind::InvalidData, e))
                    }
                }
            }
            Framing::UntilClose => {
                out.extend_from_slice(arrived);
                match app.write_all(&out).await {
                    Ok(()) => tokio::io::copy(&mut up, app).await.map(|_| false),
                    Err(e) => Err(e),
                }
            }
        };
        match finished {
            // Nothing read past the answer: the connection can serve another request.
            Ok(clean) => {
                if clean && head.reusable {
                    self.h1_pool.put(endpoint, up);
                }
                if close {
                    Next::Close
                } else {
                    Next::KeepGoing
                }
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "relaying a response failed; closing the app's connection");
                Next::Close
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1.1 upstream on loopback that answers every request with
    /// `answer` (keep-alive) and counts the connections it accepted.
    async fn upstream(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            if read_more(&mut tcp, &mut buf).await.map_or(true, |n| n == 0) {
                                return;
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn streamed_answers_are_decoded_and_their_connection_reused() {
        let (addr, accepted) = upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
        let pool = Arc::new(UpstreamPool::default());
        for _ in 0..3 {
            let answer = pool.exchange(addr, Duration::from_secs(1), b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", false, true).await.unwrap();
            let response = answer.into_response(&pool);
            assert_eq!(response.headers().get("x-kind").unwrap(), "chunked");
            assert!(response.headers().get("transfer-encoding").is_none(), "HTTP/2 has no chunked coding");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello world");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a body read to its end gives the connection back");

        // A length-delimited body larger than what came with the head streams too.
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".to_vec();
            a.extend(std::iter::repeat_n(b'x', 200_000));
            a
        });
        let (addr, accepted) = upstream(big).await;
        for _ in 0..2 {
            let answer = pool.exchange(addr, Duration::from_secs(1), b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", false, true).await.unwrap();
            let body = answer.into_response(&pool).into_body().collect().await.unwrap().to_bytes();
            assert!(body.len() == 200_000 && body.iter().all(|b| *b == b'x'));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn http2_answers_are_relayed_as_http1() {
        // A real HTTP/2 server whose answer comes in three frames, apart,
        // without a length, and ends with trailers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    for part in ["one ", "two ", "three"] {
                        let _ = tx.send(Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(part)))).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
                });
                Ok::<_, std::convert::Infallible>(hyper::Response::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))))
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new()).serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = crate::mesh_h2::client_builder().handshake::<_, Bytes>(tcp).await.unwrap();
        tokio::spawn(conn);
        let request = b"GET /x HTTP/1.1\r\nHost: web.demo\r\n\r\n";
        let head = http1::parse_request(request).unwrap().unwrap();
        let response = to_peer_proxy(sender, request, &head).await.unwrap();

        // The app's side of the relay is a real socket pair.
        let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app_side = TcpStream::connect(app_listener.local_addr().unwrap()).await.unwrap();
        let (mut proxy_side, _) = app_listener.accept().await.unwrap();
        assert!(matches!(relay_http2(&mut proxy_side, response, false, true).await, Next::Close));
        drop(proxy_side);
        let mut written = Vec::new();
        app_side.read_to_end(&mut written).await.unwrap();
        let text = String::from_utf8(written).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("connection: close"), "{text}");
        assert!(head.contains("transfer-encoding: chunked"), "{text}");
        let mut scanner = ChunkedScanner::default();
        let mut decoded = Vec::new();
        assert_eq!(scanner.scan_data(body.as_bytes(), |r| decoded.extend_from_slice(&body.as_bytes()[r])).unwrap(), Some(body.len()), "{text}");
        assert_eq!(decoded, b"one two three");
        assert!(body.ends_with("0\r\ngrpc-status: 0\r\n\r\n"), "the trailers follow the last chunk: {text}");
    }
}

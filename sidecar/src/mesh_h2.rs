//! HTTP/2 between proxies, on the `h2` crate directly rather than through
//! hyper. hyper's HTTP/2 layer costs a spawned task per stream on both sides
//! and a dispatch channel on the client; between two sidecars, where every
//! request crosses one mTLS connection, that was a measurable share of the
//! per-request CPU (docs/sidecar.md, "HTTP/2 between proxies").
//!
//! This module holds the pieces both directions share: the connection
//! settings, a request or response body read from an h2 stream, a body
//! written into one with flow control, and the write hold ([`Corked`]) that
//! lets the answers of one wake-up leave in one TLS write.

use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
#[cfg(test)]
use std::time::Duration;

/// Flow-control windows: large enough that a 1 MB answer is not paced by
/// WINDOW_UPDATE round trips between two proxies on one host or one LAN.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Per stream, what h2 may hold queued before `poll_capacity` pushes back.
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Concurrent streams a peer may open on one inbound connection.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// A first body chunk up to this size is handed to h2 without reserving
/// capacity first: it is bounded, and it is the whole body of most answers.
const UNRESERVED_FIRST_CHUNK: usize = 64 * 1024;

pub fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST);
    builder
}

pub fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// The body of an h2 request or response, as an `http_body::Body`. Received
/// bytes are released to the peer's window as they are handed on, so the
/// reader's pace is the sender's pace.
pub struct RecvBody {
    stream: h2::RecvStream,
    data_done: bool,
}

impl RecvBody {
    pub fn new(stream: h2::RecvStream) -> Self {
        RecvBody { stream, data_done: false }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// Writes `body` into `send`, then ends the stream. Chunks after the first
/// wait for flow-control capacity, so a fast body and a slow peer do not
/// pile up in memory. On a body error the stream is reset.
pub async fn send_body<B>(mut body: B, send: &mut h2::SendStream<Bytes>) -> Result<(), String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut first = true;
    loop {
        let frame = match body.frame().await {
            None => return send.send_data(Bytes::new(), true).map_err(|e| e.to_string()),
            Some(Err(e)) => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Err(format!("reading the body: {e}"));
            }
            Some(Ok(frame)) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => return send.send_trailers(trailers).map_err(|e| e.to_string()),
                // A frame of a kind HTTP/2 has no use for.
                Err(_) => continue,
            },
        };
        let end = body.is_end_stream();
        if first && data.len() <= UNRESERVED_FIRST_CHUNK {
            first = false;
            send.send_data(data, end).map_err(|e| e.to_string())?;
        } else {
            first = false;
            if data.is_empty() {
                send.send_data(data.clone(), end).map_err(|e| e.to_string())?;
            }
            while !data.is_empty() {
                send.reserve_capacity(data.len());
                let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the stream closed while sending its body".into()),
                };
                if granted == 0 {
                    continue;
                }
                let chunk = data.split_to(granted.min(data.len()));
                send.send_data(chunk, end && data.is_empty()).map_err(|e| e.to_string())?;
            }
        }
        if end {
            return Ok(());
        }
    }
}

/// Sends `request` on a peer connection and waits for the answer's head. A
/// body not yet complete is streamed by a task of its own, so that the answer
/// can begin while the request is still being sent (as gRPC streams need).
pub async fn round_trip<B>(sender: &mut h2::client::SendRequest<Bytes>, request: hyper::Request<B>) -> Result<hyper::Response<h2::RecvStream>, h2::Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let (parts, body) = request.into_parts();
    let end = body.is_end_stream();
    let (answer, mut send) = sender.send_request(hyper::Request::from_parts(parts, ()), end)?;
    if !end {
        tokio::spawn(async move {
            if let Err(e) = send_body(body, &mut send).await {
                tracing::debug!(error = %e, "streaming a request body to a peer");
            }
        });
    }
    answer.await
}

/// The next data of a body, with its bytes released to the peer's window;
/// trailers are skipped. None at the end.
pub async fn next_data(body: &mut h2::RecvStream) -> Result<Option<Bytes>, h2::Error> {
    match body.data().await {
        None => Ok(None),
        Some(Ok(data)) => {
            let _ = body.flow_control().release_capacity(data.len());
            Ok(Some(data))
        }
        Some(Err(e)) => Err(e),
    }
}

/// Most bytes held back before a write goes through regardless.
const MAX_HELD: usize = 64 * 1024;

/// The TLS stream under an HTTP/2 connection, with its writes held back
/// until h2 has had its turn. h2 keeps at most one DATA frame of 256 bytes or
/// more aside from its buffer, and flushes before it takes the next: left
/// alone, each answer of 1 KB leaves in a TLS record and a write of its own.
/// Held back, the frames one wake-up produced leave in one write, which is
/// the larger part of the per-request kernel time between two proxies.
///
/// `poll_flush` therefore does not write; whoever polls the connection calls
/// [`Uncork::poll_release`] after each poll (see [`drive`]).
pub struct Corked<IO> {
    shared: std::sync::Arc<std::sync::Mutex<Held<IO>>>,
}

/// The other handle on a [`Corked`] stream: writes what is held back.
pub struct Uncork<IO> {
    shared: std::sync::Arc<std::sync::Mutex<Held<IO>>>,
}

struct Held<IO> {
    io: IO,
    bytes: Vec<u8>,
    /// Why a release failed: the next read or write of the connection meets it.
    failed: Option<std::io::ErrorKind>,
}

pub fn cork<IO>(io: IO) -> (Corked<IO>, Uncork<IO>) {
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Held { io, bytes: Vec::with_capacity(16 * 1024), failed: None }));
    (Corked { shared: shared.clone() }, Uncork { shared })
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("HTTP/2 connection state poisoned by a panic")
}

impl<IO: tokio::io::AsyncWrite + Unpin> Held<IO> {
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let released = self.poll_write_held(cx);
        if let Poll::Ready(Err(e)) = &released {
            self.failed = Some(e.kind());
        }
        released
    }

    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while !self.bytes.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.bytes))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.bytes.drain(..n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> Uncork<IO> {
    /// Writes what is held back; Pending (with a wake-up registered) while
    /// the socket is full.
    pub fn poll_release(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.shared.lock() {
            Ok(mut held) => held.poll_release(cx),
            Err(_) => Poll::Ready(Err(poisoned())),
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Corked<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let Ok(mut held) = self.shared.lock() else { return Poll::Ready(Err(poisoned())) };
        if let Some(kind) = held.failed {
            return Poll::Ready(Err(kind.into()));
        }
        Pin::new(&mut held.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Corked<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let Ok(mut held) = self.shared.lock() else { return Poll::Ready(Err(poisoned())) };
        if let Some(kind) = held.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if held.bytes.len() >= MAX_HELD {
            ready!(held.poll_release(cx))?;
        }
        let mut room = MAX_HELD - held.bytes.len();
        let mut taken = 0;
        for buf in bufs {
            let part = &buf[..buf.len().min(room)];
            held.bytes.extend_from_slice(part);
            taken += part.len();
            room -= part.len();
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Held back on purpose: released after h2's turn, by `drive`.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Ok(mut held) = self.shared.lock() else { return Poll::Ready(Err(poisoned())) };
        ready!(held.poll_release(cx))?;
        Pin::new(&mut held.io).poll_shutdown(cx)
    }
}

/// Polls `future` (an h2 handshake or connection, which writes into a
/// [`Corked`] stream), then writes what it produced. A failed write is met
/// by the connection on its next read or write.
pub fn drive<'a, F, IO>(mut future: F, uncork: &'a Uncork<IO>) -> impl std::future::Future<Output = F::Output> + 'a
where
    F: std::future::Future + Unpin + 'a,
    IO: tokio::io::AsyncWrite + Unpin,
{
    std::future::poll_fn(move |cx| {
        let polled = Pin::new(&mut future).poll(cx);
        let _ = uncork.poll_release(cx);
        polled
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Counts the writes that reach the wire.
    struct CountWrites<IO> {
        io: IO,
        writes: Arc<AtomicUsize>,
    }

    impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountWrites<IO> {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for CountWrites<IO> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            let written = Pin::new(&mut self.io).poll_write(cx, buf);
            if matches!(written, Poll::Ready(Ok(_))) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn held_bytes_leave_on_release_and_a_full_hold_pushes_back() {
        let (near, mut far) = tokio::io::duplex(8 * 1024);
        let (mut corked, uncork) = cork(near);
        corked.write_all(b"one ").await.unwrap();
        corked.write_all(b"two").await.unwrap();
        corked.flush().await.unwrap();
        let mut buf = [0u8; 16];
        let early = tokio::time::timeout(Duration::from_millis(50), far.read(&mut buf)).await;
        assert!(early.is_err(), "nothing is written before the release");
        std::future::poll_fn(|cx| uncork.poll_release(cx)).await.unwrap();
        let n = far.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one two");

        // Past MAX_HELD a write waits for the held bytes to go out, so a
        // reader that stops reading stops the writer.
        let blocked = tokio::time::timeout(Duration::from_millis(100), corked.write_all(&vec![7u8; MAX_HELD * 2])).await;
        assert!(blocked.is_err(), "a write past the hold waits for the reader");
        let mut drained = vec![0u8; MAX_HELD];
        let (released, read) = tokio::join!(std::future::poll_fn(|cx| uncork.poll_release(cx)), far.read_exact(&mut drained));
        released.unwrap();
        read.unwrap();
        assert!(drained.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn answers_queued_together_leave_in_one_write() {
        const STREAMS: usize = 6;
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let (corked, uncork) = cork(CountWrites { io: server_io, writes: writes.clone() });
        let server = tokio::spawn(async move {
            let mut connection = drive(std::pin::pin!(server_builder().handshake::<_, Bytes>(corked)), &uncork).await.unwrap();
            let mut open = Vec::new();
            while open.len() < STREAMS {
                let (_request, respond) = drive(std::pin::pin!(connection.accept()), &uncork).await.unwrap().unwrap();
                open.push(respond);
            }
            let before = writes.load(Ordering::SeqCst);
            for mut respond in open {
                let mut send = respond.send_response(hyper::Response::new(()), false).unwrap();
                send.send_data(Bytes::from(vec![b'x'; 1024]), true).unwrap();
            }
            // One turn of the connection, then the release.
            std::future::poll_fn(|cx| {
                let _ = connection.poll_accept(cx);
                let _ = uncork.poll_release(cx);
                Poll::Ready(())
            })
            .await;
            let answered_in = writes.load(Ordering::SeqCst) - before;
            while drive(std::pin::pin!(connection.accept()), &uncork).await.is_some() {}
            answered_in
        });

        let (sender, connection) = client_builder().handshake::<_, Bytes>(client_io).await.unwrap();
        tokio::spawn(connection);
        let mut answers = Vec::new();
        for _ in 0..STREAMS {
            let mut sender = sender.clone().ready().await.unwrap();
            let request = hyper::Request::builder().uri("http://web.demo/").body(()).unwrap();
            answers.push(sender.send_request(request, true).unwrap().0);
        }
        for answer in answers {
            let mut body = answer.await.unwrap().into_body();
            let mut got = Vec::new();
            while let Some(data) = next_data(&mut body).await.unwrap() {
                got.extend_from_slice(&data);
            }
            assert_eq!(got, vec![b'x'; 1024]);
        }
        drop(sender);
        assert_eq!(server.await.unwrap(), 1, "six answers of 1 KB, one write");
    }
}

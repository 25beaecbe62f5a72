//! HTTP/2 between proxies, on the `h2` crate directly rather than through
//! hyper. hyper's HTTP/2 layer costs a spawned task per stream on both sides
//! and a dispatch channel on the client; between two sidecars, where every
//! request crosses one mTLS connection, that was a measurable share of the
//! per-request CPU (docs/sidecar.md, "HTTP/2 between proxies").
//!
//! This module holds the pieces both directions share: the connection
//! settings, a request or response body read from an h2 stream, and a body
//! written into one with flow control.

use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

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
            Err(frame) => {
                return match frame.into_trailers() {
                    Ok(trailers) => send.send_trailers(trailers).map_err(|e| e.to_string()),
                    Err(_) => Ok(()),
                };
            }
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

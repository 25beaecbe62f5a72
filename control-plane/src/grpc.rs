//! The ADS gRPC methods served straight from hyper, with responses framed by
//! hand.
//!
//! tonic's response encoder writes every message of a stream into one reused
//! buffer. That buffer stays as large as the largest message the stream ever
//! sent, for the whole life of the stream. With 2,000 proxies that is
//! gigabytes held for nothing. Here each message is encoded into its own
//! exact-size allocation, which is freed once it is written. Requests are still
//! decoded by tonic's `Streaming`.

use crate::xds::AdsService;
use bytes::{BufMut, Bytes};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use crate::xds_auth::{Admitted, PeerCertificate, XdsAuth};
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tonic::codec::Streaming;
use tonic::Status;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type HttpBody = UnsyncBoxBody<Bytes, BoxError>;

pub const ADS_SERVICE: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/";
const SOTW_METHOD: &str = "StreamAggregatedResources";
const DELTA_METHOD: &str = "DeltaAggregatedResources";

/// What an xDS call on a connection must prove before it is served.
#[derive(Clone)]
pub enum Gate {
    /// The plaintext development port: nothing.
    Open,
    /// The TLS port: a workload identity, from the connection's client
    /// certificate or the call's token.
    Authenticated { auth: Arc<XdsAuth>, peer: PeerCertificate },
}

impl Gate {
    async fn admit(&self, headers: &HeaderMap) -> Result<Admitted, Status> {
        match self {
            Gate::Open => Ok(Admitted::unchecked()),
            Gate::Authenticated { auth, peer } => auth.admit(headers, peer).await,
        }
    }
}

/// Largest request accepted (a reconnecting proxy lists every resource it has).
const MAX_REQUEST: usize = 16 * 1024 * 1024;

pub fn is_ads(path: &str) -> bool {
    path.starts_with(ADS_SERVICE)
}

/// A gRPC response stream: one data frame per message, then the status in trailers.
struct FramedStream<S> {
    messages: S,
    done: bool,
}

fn frame_message<M: Message>(m: &M) -> Bytes {
    let len = m.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.put_u8(0); // not compressed
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a Vec with enough capacity cannot fail.
    let _ = m.encode(&mut out);
    Bytes::from(out)
}

fn status_trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from(tonic::Code::Internal as i32));
    }
    trailers
}

impl<S, M> hyper::body::Body for FramedStream<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
    M: Message,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.messages).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(m))) => Poll::Ready(Some(Ok(Frame::data(frame_message(&m))))),
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(status_trailers(&status)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(status_trailers(&Status::ok(""))))))
            }
        }
    }
}

fn grpc_headers(response: &mut Response<HttpBody>) {
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
}

/// A trailers-only response: the call failed before any message.
fn failed(status: &Status) -> Response<HttpBody> {
    let mut response = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync());
    grpc_headers(&mut response);
    response.headers_mut().extend(status_trailers(status));
    response
}

fn streamed<S, M>(messages: S) -> Response<HttpBody>
where
    S: Stream<Item = Result<M, Status>> + Unpin + Send + 'static,
    M: Message + 'static,
{
    let mut response = Response::new(FramedStream { messages, done: false }.boxed_unsync());
    grpc_headers(&mut response);
    response
}

/// Serves one ADS call; `gate` says who the caller must prove to be.
pub async fn serve_ads(service: &AdsService, request: Request<Incoming>, gate: &Gate) -> Response<HttpBody> {
    let is_grpc = request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc {
        let mut r = Response::new(http_body_util::Full::new(Bytes::from_static(b"xDS is served over gRPC (content-type application/grpc)\n")).map_err(|never| match never {}).boxed_unsync());
        *r.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return r;
    }
    let caller = match gate.admit(request.headers()).await {
        Ok(c) => c,
        Err(status) => {
            tracing::info!(code = ?status.code(), reason = %status.message(), "xDS call refused");
            return failed(&status);
        }
    };
    let method = request.uri().path().strip_prefix(ADS_SERVICE).unwrap_or_default().to_string();
    let body = request.into_body();
    match method.as_str() {
        SOTW_METHOD => {
            let requests = Streaming::new_request(tonic_prost::ProstDecoder::<DiscoveryRequest>::default(), body, None, Some(MAX_REQUEST));
            let mut call = tonic::Request::new(requests);
            call.extensions_mut().insert(caller);
            match service.stream_aggregated_resources(call).await {
                Ok(r) => streamed(r.into_inner()),
                Err(status) => failed(&status),
            }
        }
        DELTA_METHOD => {
            let requests = Streaming::new_request(tonic_prost::ProstDecoder::<DeltaDiscoveryRequest>::default(), body, None, Some(MAX_REQUEST));
            let mut call = tonic::Request::new(requests);
            call.extensions_mut().insert(caller);
            match service.delta_aggregated_resources(call).await {
                Ok(r) => streamed(r.into_inner()),
                Err(status) => failed(&status),
            }
        }
        other => failed(&Status::unimplemented(format!("method {other:?} is not served; use {SOTW_METHOD} or {DELTA_METHOD}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

    #[test]
    fn frames_carry_the_length_prefix_and_the_message() {
        let m = DiscoveryResponse { nonce: "42".into(), ..Default::default() };
        let framed = frame_message(&m);
        assert_eq!(framed[0], 0);
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(len, framed.len() - 5);
        assert_eq!(DiscoveryResponse::decode(&framed[5..]).expect("decodes"), m);
    }
}

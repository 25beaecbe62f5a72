//! HTTP/1.1 client pieces shared by `load` and `get`: target URLs, one
//! keep-alive connection, and the classification of what went wrong.

use crate::stats::Cause;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Header a Revmesh sidecar sets on requests it delivers to the app: the
/// caller's verified SPIFFE identity.
pub const PEER_IDENTITY_HEADER: &str = "x-revmesh-peer-identity";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target {url:?} is not a URL: {reason}; write it like http://server.ns.svc.cluster.local:8080/anything")]
    NotAUrl { url: String, reason: String },
    #[error("target {url:?} uses {scheme:?}; only http:// is supported (the sidecar adds mTLS)")]
    Scheme { url: String, scheme: String },
    #[error("target {url:?} names no host")]
    NoHost { url: String },
}

/// Where requests go: `http://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// host:port to connect to.
    pub authority: String,
    /// The Host header.
    pub host: String,
    /// The request target (origin form).
    pub path_and_query: String,
    /// The path alone, which a mesh-app server echoes back.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| TargetError::NotAUrl { url: url.into(), reason: e.to_string() })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(TargetError::Scheme { url: url.into(), scheme: other.into() }),
            None => return Err(TargetError::NotAUrl { url: url.into(), reason: "no scheme".into() }),
        }
        let authority = uri.authority().ok_or_else(|| TargetError::NoHost { url: url.into() })?;
        if authority.host().is_empty() {
            return Err(TargetError::NoHost { url: url.into() });
        }
        let port = authority.port_u16().unwrap_or(80);
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let path_and_query = if path_and_query.is_empty() { "/".to_string() } else { path_and_query };
        Ok(Target {
            url: url.into(),
            authority: format!("{}:{port}", authority.host()),
            host: authority.as_str().to_string(),
            path: uri.path().to_string(),
            path_and_query,
        })
    }

    pub fn request(&self) -> hyper::Request<Empty<Bytes>> {
        let mut req = hyper::Request::new(Empty::new());
        *req.uri_mut() = self.path_and_query.parse().unwrap_or_else(|_| hyper::Uri::from_static("/"));
        if let Ok(host) = hyper::header::HeaderValue::from_str(&self.host) {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        req.headers_mut().insert(hyper::header::USER_AGENT, hyper::header::HeaderValue::from_static("mesh-app"));
        req
    }
}

/// A failed step, classified for the stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub cause: Cause,
    pub detail: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.cause, self.detail)
    }
}

/// What an I/O error on connect means.
pub fn classify_connect(e: &std::io::Error) -> Cause {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Cause::ConnectRefused,
        std::io::ErrorKind::TimedOut => Cause::Timeout,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => Cause::Reset,
        _ => Cause::ConnectError,
    }
}

/// What an error while sending or reading an exchange means: the I/O error
/// underneath decides when there is one.
pub fn classify_exchange(e: &hyper::Error) -> Cause {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe => Cause::Reset,
                std::io::ErrorKind::TimedOut => Cause::Timeout,
                std::io::ErrorKind::UnexpectedEof => Cause::Closed,
                _ => Cause::Protocol,
            };
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        Cause::Closed
    } else if e.is_timeout() {
        Cause::Timeout
    } else {
        Cause::Protocol
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct Connection {
    pub sender: SendRequest<Empty<Bytes>>,
}

impl Connection {
    /// Resolves and connects (the caller bounds the time).
    pub async fn open(authority: &str) -> Result<Connection, RequestError> {
        let tcp = tokio::net::TcpStream::connect(authority).await.map_err(|e| RequestError { cause: classify_connect(&e), detail: format!("connecting to {authority}: {e}") })?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| RequestError { cause: classify_exchange(&e), detail: format!("HTTP/1.1 handshake with {authority}: {e}") })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
        Ok(Connection { sender })
    }

    /// Usable for another request (not closed by either side).
    pub fn reusable(&self) -> bool {
        self.sender.is_ready() && !self.sender.is_closed()
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub status: hyper::StatusCode,
    pub body: Bytes,
}

/// The result of trying one request on one connection.
pub enum Attempt {
    Answered(Answer),
    /// The connection closed before the request was written: nothing reached
    /// the server, so sending it on a new connection is safe.
    NotSent,
    Failed(RequestError),
}

/// Sends the request on `conn` and reads the whole answer.
pub async fn exchange(conn: &mut Connection, target: &Target) -> Attempt {
    let response = match conn.sender.try_send_request(target.request()).await {
        Ok(r) => r,
        Err(mut e) => {
            if e.take_message().is_some() {
                return Attempt::NotSent;
            }
            let error = e.into_error();
            return Attempt::Failed(RequestError { cause: classify_exchange(&error), detail: format!("{} {}: {error}", target.authority, target.path_and_query) });
        }
    };
    let status = response.status();
    match response.into_body().collect().await {
        Ok(body) => Attempt::Answered(Answer { status, body: body.to_bytes() }),
        Err(e) => Attempt::Failed(RequestError { cause: classify_exchange(&e), detail: format!("reading the answer of {}: {e}", target.url) }),
    }
}

/// One request on a fresh connection, bounded by `timeout` (for `get`).
pub async fn get_once(target: &Target, timeout: Duration) -> Result<Answer, RequestError> {
    let attempt = async {
        let mut conn = Connection::open(&target.authority).await?;
        match exchange(&mut conn, target).await {
            Attempt::Answered(a) => Ok(a),
            Attempt::NotSent => Err(RequestError { cause: Cause::Closed, detail: format!("{} closed the connection before the request was sent", target.authority) }),
            Attempt::Failed(e) => Err(e),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(RequestError { cause: Cause::Timeout, detail: format!("no complete answer from {} within {timeout:?}", target.url) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_default_port_and_path() {
        let t = Target::parse("http://server.ns.svc.cluster.local:8080/anything?x=1").unwrap();
        assert_eq!(t.authority, "server.ns.svc.cluster.local:8080");
        assert_eq!(t.host, "server.ns.svc.cluster.local:8080");
        assert_eq!(t.path_and_query, "/anything?x=1");
        assert_eq!(t.path, "/anything");
        let t = Target::parse("http://10.0.0.1").unwrap();
        assert_eq!((t.authority.as_str(), t.path_and_query.as_str(), t.path.as_str()), ("10.0.0.1:80", "/", "/"));
    }

    #[test]
    fn targets_that_cannot_work_are_refused_with_the_reason() {
        assert!(matches!(Target::parse("https://a/"), Err(TargetError::Scheme { .. })));
        assert!(matches!(Target::parse("server:8080/x"), Err(TargetError::NotAUrl { .. })));
        assert!(matches!(Target::parse("/just/a/path"), Err(TargetError::NotAUrl { .. })));
        assert!(Target::parse("http://a b/").unwrap_err().to_string().contains("http://server.ns.svc.cluster.local:8080/anything"));
    }

    #[test]
    fn connect_errors_by_kind() {
        use std::io::{Error, ErrorKind};
        assert_eq!(classify_connect(&Error::from(ErrorKind::ConnectionRefused)), Cause::ConnectRefused);
        assert_eq!(classify_connect(&Error::from(ErrorKind::TimedOut)), Cause::Timeout);
        assert_eq!(classify_connect(&Error::from(ErrorKind::ConnectionReset)), Cause::Reset);
        assert_eq!(classify_connect(&Error::other("no such host")), Cause::ConnectError);
    }
}

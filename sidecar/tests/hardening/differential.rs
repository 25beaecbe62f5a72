//! Differential test of `sidecar::http1` against two reference parsers:
//! `httparse` (the request line and header fields, byte for byte) and hyper's
//! HTTP/1 server and client (method, target, headers, and the body its own
//! framing rules delimit). On every head ours accepts, both references must
//! accept it and agree; ours may refuse what they accept (it is stricter on
//! purpose: docs/sidecar.md lists how).
//!
//! The corpus is generated (proptest) from pools of valid, borderline and
//! invalid parts, plus hand-written borderline cases.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use proptest::prelude::*;
use sidecar::http1::{self, ChunkedScanner, Framing};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a parser made of a message: (method or status, target, minor
/// version, header fields, body). Header names lowercased and fields sorted,
/// as hyper's map keeps neither case nor order across names.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    start: String,
    target: String,
    minor: u8,
    headers: Vec<(String, Vec<u8>)>,
    body: Result<Vec<u8>, ()>,
}

fn sorted(mut headers: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    headers.sort();
    headers
}

/// The body ours delimits in `rest` (the bytes after the head); Err when
/// its framing is broken or the bytes end first.
fn our_body(framing: Framing, rest: &[u8]) -> Result<Vec<u8>, ()> {
    match framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(n) => rest.get(..usize::try_from(n).map_err(|_| ())?).map(<[u8]>::to_vec).ok_or(()),
        Framing::UntilClose => Ok(rest.to_vec()),
        Framing::Chunked => {
            let mut data = Vec::new();
            match ChunkedScanner::default().scan_data(rest, |r| data.extend_from_slice(&rest[r])) {
                Ok(Some(_)) => Ok(data),
                _ => Err(()),
            }
        }
    }
}

fn ours_request(bytes: &[u8]) -> Option<Seen> {
    let head = http1::parse_request(bytes).ok()??;
    let headers = head.headers.iter().map(|(n, v)| (String::from_utf8_lossy(&bytes[n.clone()]).to_ascii_lowercase(), bytes[v.clone()].to_vec())).collect();
    Some(Seen {
        start: String::from_utf8_lossy(head.method(bytes)).into_owned(),
        target: head.target(bytes).to_string(),
        minor: head.minor,
        headers: sorted(headers),
        body: our_body(head.framing, &bytes[head.head_len..]),
    })
}

/// httparse on the same bytes: the head must parse to the same length,
/// request line and fields, in the same order.
fn httparse_agrees_on_request(bytes: &[u8]) -> Result<(), String> {
    let head = http1::parse_request(bytes).ok().flatten().ok_or("ours refused")?;
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == head.head_len => {}
        other => return Err(format!("httparse: {other:?}, ours: a head of {} bytes", head.head_len)),
    }
    let ours: Vec<(&[u8], &[u8])> = head.headers.iter().map(|(n, v)| (&bytes[n.clone()], &bytes[v.clone()])).collect();
    let theirs: Vec<(&[u8], &[u8])> = req.headers.iter().map(|h| (h.name.as_bytes(), h.value)).collect();
    let same = req.method.map(str::as_bytes) == Some(head.method(bytes)) && req.path == Some(head.target(bytes)) && req.version == Some(head.minor) && ours == theirs;
    same.then_some(()).ok_or_else(|| format!("httparse: {:?} {:?} {:?} {theirs:?}", req.method, req.path, req.version))
}

/// hyper's HTTP/1 server on the same bytes (then end of input).
async fn hyper_request(bytes: &[u8]) -> Option<Seen> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let tx = tx.lock().unwrap().take();
        async move {
            let (parts, body) = req.into_parts();
            let body = tokio::time::timeout(Duration::from_secs(2), body.collect()).await.map_err(|_| ()).and_then(|b| b.map(|c| c.to_bytes().to_vec()).map_err(|_| ()));
            let headers = parts.headers.iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect();
            let minor = if parts.version == hyper::Version::HTTP_10 { 0 } else { 1 };
            if let Some(tx) = tx {
                let _ = tx.send(Seen { start: parts.method.to_string(), target: parts.uri.to_string(), minor, headers: sorted(headers), body });
            }
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    tokio::spawn(async move {
        // Half-closed: the input ends after the bytes, and the answer still comes.
        let _ = hyper::server::conn::http1::Builder::new().half_close(true).serve_connection(hyper_util::rt::TokioIo::new(server), service).await;
    });
    let _ = client.write_all(bytes).await;
    let _ = client.shutdown().await;
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
    });
    tokio::time::timeout(Duration::from_secs(3), rx).await.ok()?.ok()
}

fn ours_response(bytes: &[u8]) -> Option<Seen> {
    let head = http1::parse_response(bytes, false).ok()??;
    let headers = head.headers.iter().map(|(n, v)| (String::from_utf8_lossy(&bytes[n.clone()]).to_ascii_lowercase(), bytes[v.clone()].to_vec())).collect();
    Some(Seen { start: head.status.to_string(), target: String::new(), minor: head.minor, headers: sorted(headers), body: our_body(head.framing, &bytes[head.head_len..]) })
}

fn httparse_agrees_on_response(bytes: &[u8]) -> Result<(), String> {
    let head = http1::parse_response(bytes, false).ok().flatten().ok_or("ours refused")?;
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut res = httparse::Response::new(&mut fields);
    match res.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == head.head_len => {}
        other => return Err(format!("httparse: {other:?}, ours: a head of {} bytes", head.head_len)),
    }
    let ours: Vec<(&[u8], &[u8])> = head.headers.iter().map(|(n, v)| (&bytes[n.clone()], &bytes[v.clone()])).collect();
    let theirs: Vec<(&[u8], &[u8])> = res.headers.iter().map(|h| (h.name.as_bytes(), h.value)).collect();
    let same = res.code == Some(head.status) && res.version == Some(head.minor) && ours == theirs;
    same.then_some(()).ok_or_else(|| format!("httparse: {:?} {:?} {theirs:?}", res.code, res.version))
}

/// hyper's HTTP/1 client, sent a GET, reading the same bytes as the answer
/// (then end of input).
async fn hyper_response(bytes: &[u8]) -> Option<Seen> {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let answer = bytes.to_vec();
    tokio::spawn(async move {
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match server.read(&mut chunk).await {
                Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        let _ = server.write_all(&answer).await;
        let _ = server.shutdown().await;
        let _ = server.read_to_end(&mut head).await;
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(client)).await.ok()?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/").header("host", "test").body(Empty::new()).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(3), sender.send_request(request)).await.ok()?.ok()?;
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(2), body.collect()).await.map_err(|_| ()).and_then(|b| b.map(|c| c.to_bytes().to_vec()).map_err(|_| ()));
    let headers = parts.headers.iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect();
    let minor = if parts.version == hyper::Version::HTTP_10 { 0 } else { 1 };
    Some(Seen { start: parts.status.as_u16().to_string(), target: String::new(), minor, headers: sorted(headers), body })
}

/// Checks one message; Err says how the parsers disagree.
async fn check(bytes: &[u8], request: bool) -> Result<bool, String> {
    let ours = if request { ours_request(bytes) } else { ours_response(bytes) };
    let Some(ours) = ours else { return Ok(false) };
    if request { httparse_agrees_on_request(bytes) } else { httparse_agrees_on_response(bytes) }?;
    let theirs = if request { hyper_request(bytes).await } else { hyper_response(bytes).await };
    match theirs {
        Some(theirs) if theirs == ours => Ok(true),
        theirs => Err(format!("{:?}\n  ours:  {ours:?}\n  hyper: {theirs:?}", String::from_utf8_lossy(bytes))),
    }
}

/// Each pool of parts: what valid messages use, and borderline or invalid
/// ones (picked a quarter of the time, so that most messages still parse and
/// the comparison covers their framing).
const METHODS: (&[&str], &[&str]) = (&["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE", "PURGE", "M-SEARCH", "get", "Get"], &["G_T", "G@T", "", "GE T", "G\u{0}T"]);
const TARGETS: (&[&str], &[&str]) = (&["/", "/a?b=1", "/a/b/../c", "/%41%20", "*", "http://h/x", "//x", "/a?b=c&d=e;f", "/~user"], &["/a#frag", "/a b", "/\u{7f}", "/é", ""]);
const VERSIONS: (&[&str], &[&str]) = (&["HTTP/1.1", "HTTP/1.0"], &["HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 ", "HTTP/11"]);
const STATUSES: (&[&str], &[&str]) = (&["200 OK", "201 Created", "204 No Content", "301 Moved", "304 Not Modified", "404 Not Found", "500 Oops", "503 ", "299 X", "600 Odd", "200"], &["2x0 Bad", "20 Short", "1000 Long"]);
const NAMES: (&[&str], &[&str]) = (&["Host", "Content-Length", "content-length", "Transfer-Encoding", "Connection", "X-A", "x-a", "Accept", "Te", "Trailer", "Keep-Alive", "X_Under"], &["Bad Name", "X-A ", "", "Content-Length ", "Upgrade", "Expect"]);
const VALUES: (&[&str], &[&str]) = (
    &["a", "", " spaced ", "0", "5", "05", "22", "chunked", "CHUNKED", "close", "keep-alive", "content-length", "transfer-encoding", "x-a", "a\tb", "[::1]:80", "caf\u{e9}"],
    &["5, 5", "5,6", "-1", "+5", "0x5", "99999999999999999999", "gzip, chunked", "chunked, gzip", "identity", " chunked ", "host", "100-continue", "websocket", "a b", "a@b", "x\u{7}y"],
);
const BODIES: &[&str] = &["", "hello", "hello world 0123456789", "5\r\nhello\r\n0\r\n\r\n", "5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n", "\r\nhello\r\n0\r\n\r\n", "zz\r\nhello\r\n", "5\r\nhelloXX0\r\n\r\n", "0\r\n\r\n"];

fn pick((valid, odd): (&'static [&'static str], &'static [&'static str])) -> impl Strategy<Value = &'static str> {
    prop_oneof![3 => proptest::sample::select(valid), 1 => proptest::sample::select(odd)]
}

fn head_fields() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    proptest::collection::vec((pick(NAMES), pick(VALUES)), 0..6)
}

fn message(first_line: String, fields: &[(&str, &str)], eol: &str, leading: usize, body: &str, with_host: bool) -> Vec<u8> {
    let mut text = eol.repeat(leading);
    text.push_str(&first_line);
    text.push_str(eol);
    if with_host {
        text.push_str(&format!("Host: web{eol}"));
    }
    for (name, value) in fields {
        text.push_str(&format!("{name}: {value}{eol}"));
    }
    text.push_str(eol);
    text.push_str(body);
    text.into_bytes()
}

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    (pick(METHODS), pick(TARGETS), pick(VERSIONS), head_fields(), prop_oneof![4 => Just("\r\n"), 1 => Just("\n")], 0..3usize, proptest::sample::select(BODIES), proptest::bool::weighted(0.8))
        .prop_map(|(method, target, version, fields, eol, leading, body, host)| message(format!("{method} {target} {version}"), &fields, eol, leading, body, host))
}

fn response_bytes() -> impl Strategy<Value = Vec<u8>> {
    (prop_oneof![3 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/1.2"), 1 => Just("HTTP/2")], pick(STATUSES), head_fields(), prop_oneof![4 => Just("\r\n"), 1 => Just("\n")], proptest::sample::select(BODIES))
        .prop_map(|(version, status, fields, eol, body)| message(format!("{version} {status}"), &fields, eol, 0, body, false))
}

/// Hand-written borderline cases: what smuggling and desync attacks use.
const BORDERLINE_REQUESTS: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 \r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 ;a=b\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: 1\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
    "GET / HTTP/1.1\r\nHost: a\r\nX: \u{80}\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    "GET / HTTP/1.1\nHost: a\n\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET http://a/b HTTP/1.1\r\nHost: c\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
];

const BORDERLINE_RESPONSES: &[&str] = &[
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\n\r\nuntil close",
    "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nGrpc-Status: 0\r\n\r\n",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

#[test]
fn borderline_heads_agree_with_httparse_and_hyper() {
    let rt = runtime();
    let mut failures = Vec::new();
    let mut accepted = 0;
    for (cases, request) in [(BORDERLINE_REQUESTS, true), (BORDERLINE_RESPONSES, false)] {
        for case in cases {
            match rt.block_on(check(case.as_bytes(), request)) {
                Ok(ours_accepted) => accepted += usize::from(ours_accepted),
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(accepted >= 20, "the borderline corpus is mostly accepted ({accepted})");
}

/// Runs `cases` generated messages through [`check`]; every disagreement
/// fails the test, and so does a corpus ours mostly refuses (it would then
/// compare little).
fn run_generated(strategy: impl Strategy<Value = Vec<u8>>, request: bool, cases: u32) {
    let rt = runtime();
    let accepted = std::cell::Cell::new(0u32);
    let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let outcome = runner.run(&strategy, |bytes| {
        let agreed = rt.block_on(check(&bytes, request)).map_err(TestCaseError::fail)?;
        accepted.set(accepted.get() + u32::from(agreed));
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(accepted.get() >= cases / 10, "only {} of {cases} generated messages were accepted: the corpus compares too little", accepted.get());
    println!("{} of {cases} generated {} accepted and agreed on", accepted.get(), if request { "requests" } else { "responses" });
}

#[test]
fn generated_requests_agree_with_httparse_and_hyper() {
    run_generated(request_bytes(), true, 2000);
}

#[test]
fn generated_responses_agree_with_httparse_and_hyper() {
    run_generated(response_bytes(), false, 2000);
}

//! The gateway binary against the benchmark's four subgraphs (async-graphql,
//! in this process): the benchmark answer, partial data on an outage, hot
//! reload, limits, GraphQL over HTTP and persisted queries.

mod common;

use serde_json::{json, Value as Json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Gateway {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn start(subgraphs: std::net::SocketAddr, extra_config: &str) -> Gateway {
        Self::start_with(
            "supergraph.graphql",
            &common::config_for(subgraphs, extra_config),
        )
    }

    /// The gateway over a supergraph of tests/data, with this gateway.yaml.
    fn start_with(supergraph: &str, config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("supergraph.graphql"),
            common::supergraph_text::supergraph_text(supergraph),
        )
        .expect("supergraph");
        std::fs::write(dir.path().join("gateway.yaml"), config).expect("config");
        let port = kube_harness::free_port().expect("port");
        let child =
            Command::new(kube_harness::workspace_bin("graphql-gateway").expect("gateway binary"))
                .args([
                    "--supergraph",
                    &dir.path().join("supergraph.graphql").display().to_string(),
                    "--config",
                    &dir.path().join("gateway.yaml").display().to_string(),
                ])
                .args(["--listen", &format!("127.0.0.1:{port}"), "--poll-ms", "100"])
                .env("RUST_LOG", "info,graphql_gateway::execute=debug")
                .stderr(std::fs::File::create(dir.path().join("gateway.log")).expect("log"))
                .spawn()
                .expect("gateway starts");
        let g = Gateway { child, port, dir };
        let start = Instant::now();
        while g.get("/health").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "gateway not up: {}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn curl(&self, args: &[&str]) -> (u16, String, String) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "20", "-D", "-", "-w", "\n%{http_code}"])
            .args(args)
            .stdout(Stdio::piped())
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (rest, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or(("", rest));
        (
            code.trim().parse().unwrap_or(0),
            head.to_ascii_lowercase(),
            body.to_string(),
        )
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (code, _, body) = self.curl(&[&format!("http://127.0.0.1:{}{path}", self.port)]);
        (code, body)
    }

    /// POSTs a GraphQL request; (status, content type, body).
    fn post(&self, body: &Json, accept: &str) -> (u16, String, Json) {
        // From a file: a large body does not fit in an argument list.
        let file = tempfile::NamedTempFile::new_in(self.dir.path()).expect("body file");
        std::fs::write(file.path(), body.to_string()).expect("body");
        let (code, head, text) = self.curl(&[
            "-H",
            "content-type: application/json",
            "-H",
            &format!("accept: {accept}"),
            // No `100 Continue` before the answer's own header.
            "-H",
            "expect:",
            "--data-binary",
            &format!("@{}", file.path().display()),
            &format!("http://127.0.0.1:{}/graphql", self.port),
        ]);
        let ctype = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type:"))
            .unwrap_or("")
            .trim()
            .to_string();
        (
            code,
            ctype,
            serde_json::from_str(&text).unwrap_or(Json::String(text)),
        )
    }

    fn query(&self, query: &str) -> Json {
        self.post(&json!({"query": query}), "application/json").2
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn the_benchmark_query_gets_the_expected_response() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "");
    let query: Json = serde_json::from_str(
        &std::fs::read_to_string(common::data_dir().join("query.json")).expect("query"),
    )
    .expect("json");
    let expected: Json = serde_json::from_str(
        &std::fs::read_to_string(common::data_dir().join("expected-response.json"))
            .expect("expected"),
    )
    .expect("json");
    let (status, ctype, got) = gw.post(&query, "application/graphql-response+json");
    assert_eq!(status, 200);
    assert_eq!(ctype, "application/graphql-response+json");
    assert_eq!(got, expected, "gateway log:\n{}", gw.log());
    // Field order follows the query, as Apollo Gateway's does: the bytes match too.
    let (_, _, text) = gw.curl(&[
        "-H",
        "content-type: application/json",
        "--data-binary",
        &query.to_string(),
        &format!("http://127.0.0.1:{}/graphql", gw.port),
    ]);
    assert_eq!(
        text.len(),
        std::fs::read_to_string(common::data_dir().join("expected-response.json"))
            .expect("expected")
            .trim_end()
            .len()
    );
    // The plan has 13 fetches in 4 waves. Entity fetches of one wave to one
    // subgraph share a request: 2 root requests, then reviews; products and
    // accounts; inventory twice (once early for the top products).
    let before: usize = subgraphs
        .requests
        .values()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    gw.post(&query, "application/json");
    let after: usize = subgraphs
        .requests
        .values()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(after - before, 7, "subgraph requests for one query");
    // A tracing span per fetch, closed with its timing, for each subgraph the query touched.
    let log = gw.log();
    for subgraph in ["accounts", "inventory", "products", "reviews"] {
        let closed = log.lines().any(|l| {
            l.contains("fetch{subgraph=")
                && l.contains(&format!("subgraph={subgraph}"))
                && l.contains("close time.busy=")
        });
        assert!(closed, "no closed fetch span for {subgraph}:\n{log}");
    }
}

#[test]
fn introspection_shows_the_api_schema_without_federation_machinery() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "");
    let got = gw.query("{ __schema { types { name } directives { name } } join: __type(name: \"join__Graph\") { name } }");
    let types: Vec<&str> = got["data"]["__schema"]["types"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        types.contains(&"Product") && types.contains(&"Query"),
        "{types:?}"
    );
    assert!(
        !types
            .iter()
            .any(|t| t.starts_with("join__") || t.starts_with("link__")),
        "{types:?}"
    );
    let directives: Vec<&str> = got["data"]["__schema"]["directives"]
        .as_array()
        .expect("directives")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(
        !directives
            .iter()
            .any(|d| d.starts_with("join__") || *d == "link"),
        "{directives:?}"
    );
    assert!(got["data"]["join"].is_null(), "{got}");
    // Validation uses the same schema: federation types cannot be named by clients.
    let refused = gw.query("query($g: join__Graph) { __typename }");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("join__Graph"),
        "{refused}"
    );
}

#[test]
fn a_subgraph_outage_gives_partial_data_with_errors() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "");
    subgraphs.down["reviews"].store(true, std::sync::atomic::Ordering::Relaxed);
    let got = gw.query("{ users { id name reviews { id body } } topProducts { upc name } }");
    assert_eq!(got["data"]["users"][0]["name"], "Uri Goldshtein", "{got}");
    assert_eq!(got["data"]["users"][0]["reviews"], Json::Null, "{got}");
    assert_eq!(got["data"]["topProducts"][0]["name"], "Table", "{got}");
    let message = got["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("reviews"), "{got}");
}

#[test]
fn http_negotiation_status_codes_get_and_persisted_queries() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "");
    // A validation error: 400 with the GraphQL media type, 200 with application/json.
    let bad = json!({"query": "{ users { nope } }"});
    let (status, ctype, body) = gw.post(&bad, "application/graphql-response+json");
    assert_eq!(
        (status, ctype.as_str()),
        (400, "application/graphql-response+json"),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nope"),
        "{body}"
    );
    assert!(body.get("data").is_none(), "{body}");
    let (status, ctype, _) = gw.post(&bad, "application/json");
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    // GET works for queries.
    let (code, body) = gw.get("/graphql?query=%7Busers%7Bid%7D%7D");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Json>(&body).expect("json")["data"]["users"][0]["id"],
        "1"
    );
    // Not acceptable, unsupported media type, not JSON.
    let (code, _, _) = gw.curl(&[
        "-H",
        "accept: text/html",
        &format!(
            "http://127.0.0.1:{}/graphql?query=%7Bme%7Bid%7D%7D",
            gw.port
        ),
    ]);
    assert_eq!(code, 406);
    let (code, _, _) = gw.curl(&[
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "{me{id}}",
        &format!("http://127.0.0.1:{}/graphql", gw.port),
    ]);
    assert_eq!(code, 415);
    let (code, _, _) = gw.curl(&[
        "-H",
        "content-type: application/json",
        "--data-binary",
        "{not json",
        &format!("http://127.0.0.1:{}/graphql", gw.port),
    ]);
    assert_eq!(code, 400);
    // Automatic persisted queries: unknown hash, then registered, then by hash alone.
    let q = "{ me { username } }";
    let hash = "b07a6e5ecdd2c4b95f8cd9d9bbd2b3c5d1c9d8b0f1d2a0c6e3e0e0f0f0a0b0c0";
    let sha = {
        let out = Command::new("sh")
            .args(["-c", &format!("printf '%s' '{q}' | sha256sum")])
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or(hash)
            .to_string()
    };
    let by_hash = json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha}}});
    assert_eq!(
        gw.post(&by_hash, "application/json").2["errors"][0]["message"],
        "PersistedQueryNotFound"
    );
    let register =
        json!({"query": q, "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha}}});
    assert_eq!(
        gw.post(&register, "application/json").2["data"]["me"]["username"],
        "urigo"
    );
    assert_eq!(
        gw.post(&by_hash, "application/json").2["data"]["me"]["username"],
        "urigo"
    );
    let wrong =
        json!({"query": q, "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}}});
    assert_eq!(
        gw.post(&wrong, "application/json").2["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_HASH_MISMATCH"
    );
    // Aliases, variables, skip/include and __typename.
    let body = json!({"query": "query($id: ID!, $skip: Boolean!) { a: user(id: $id) { __typename name n2: username @skip(if: $skip) } }", "variables": {"id": "2", "skip": true}});
    let got = gw.post(&body, "application/json").2;
    assert_eq!(
        got,
        json!({"data": {"a": {"__typename": "User", "name": "Dotan Simha"}}})
    );
    // A variable of the wrong type is a request error.
    let bad_var = json!({"query": "query($id: ID!) { user(id: $id) { name } }", "variables": {"id": {"x": 1}}});
    let (status, _, body) = gw.post(&bad_var, "application/graphql-response+json");
    assert_eq!(status, 400, "{body}");
    // Introspection.
    let got = gw.query("{ __schema { queryType { name } } }");
    assert_eq!(
        got["data"]["__schema"]["queryType"]["name"], "Query",
        "{got}"
    );
}

#[test]
fn limits_refuse_with_a_clear_error_and_introspection_can_be_off() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "limits: {maxDepth: 3, maxAliases: 1, maxRootFields: 2, maxCost: 50, listSize: 10}\nintrospection: false\nmaxRequestBytes: 2000\n");
    let code = |v: &Json| {
        v["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let deep = gw.query("{ users { reviews { product { reviews { id } } } } }");
    assert_eq!(code(&deep), "OPERATION_LIMIT_EXCEEDED", "{deep}");
    assert!(
        deep["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("levels deep"),
        "{deep}"
    );
    let aliased = gw.query("{ a: me { id } b: me { id } }");
    assert!(
        aliased["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("aliases"),
        "{aliased}"
    );
    let roots = gw.query("{ me { id } users { id } topProducts { upc } }");
    assert!(
        roots["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("root fields"),
        "{roots}"
    );
    let costly = gw.query("{ users { reviews { id } } }");
    assert!(
        costly["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cost"),
        "{costly}"
    );
    let intro = gw.query("{ __schema { queryType { name } } }");
    assert_eq!(code(&intro), "INTROSPECTION_DISABLED", "{intro}");
    let big = json!({"query": format!("{{ me {{ id }} }} # {}", "x".repeat(3000))});
    assert_eq!(gw.post(&big, "application/json").0, 413);
    assert_eq!(gw.query("{ me { id } }")["data"]["me"]["id"], "1");
}

#[test]
fn the_supergraph_reloads_and_an_invalid_one_is_refused() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "");
    let path = gw.dir.path().join("supergraph.graphql");
    let original = std::fs::read_to_string(&path).expect("supergraph");
    assert_eq!(
        gw.query("{ me { birthday } }")["data"]["me"]["birthday"],
        1234567890
    );
    // Invalid: refused, the old schema keeps serving.
    std::fs::write(
        &path,
        format!("{original}\ntype Broken {{ field: Nope }}\n"),
    )
    .expect("write");
    let start = Instant::now();
    while !gw.log().contains("supergraph change refused") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gw.log().contains("Nope"),
        "the reason is logged: {}",
        gw.log()
    );
    assert_eq!(
        gw.query("{ me { birthday } }")["data"]["me"]["birthday"],
        1234567890
    );
    // Valid: applied; the removed field is now a validation error.
    std::fs::write(
        &path,
        original.replace("  birthday: Int @join__field(graph: ACCOUNTS)\n", ""),
    )
    .expect("write");
    let start = Instant::now();
    loop {
        let got = gw.query("{ me { birthday } }");
        if got["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("birthday"))
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{got}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        gw.query("{ me { username } }")["data"]["me"]["username"],
        "urigo"
    );
}

/// graphql-js 16, the reference implementation, installed by `.ci/run`.
fn graphql_js() -> std::path::PathBuf {
    let dir = std::env::var_os("REVMESH_GRAPHQL_JS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/revmesh/graphql-js/node_modules/graphql")
        });
    assert!(dir.join("package.json").is_file(), "graphql@16 not found at {}: npm install --prefix ~/.cache/revmesh/graphql-js graphql@16 (or set REVMESH_GRAPHQL_JS)", dir.display());
    dir
}

/// graphql-js 16's `validate()` of each query against the schema the
/// GraphQL server at `url` introspects: `{version, results: [{syntax,
/// errors}]}` (tests/graphql-js/validate.mjs).
fn graphql_js_validate(url: &str, queries: &[&str], scratch: &std::path::Path) -> Json {
    let file = scratch.join("queries.json");
    std::fs::write(&file, serde_json::to_string(queries).expect("json")).expect("write");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphql-js/validate.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(graphql_js())
        .arg(url)
        .arg(&file)
        .output()
        .expect("node is installed (apt-get install nodejs)");
    assert!(
        out.status.success(),
        "graphql-js: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("graphql-js output")
}

#[test]
fn invalid_operations_are_refused_where_graphql_js_16_refuses_them() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "");
    let queries: Vec<&str> = vec![
        "{ me { id } }", // valid: the control
        "{ me { nope } }",
        "{ me { id { deeper } } }",
        "{ me }",
        "{ topProducts(first: \"many\") { upc } }",
        "{ topProducts(size: 3) { upc } }",
        "{ topProducts(first: 1, first: 2) { upc } }",
        "query($n: String) { topProducts(first: $n) { upc } }",
        "query { topProducts(first: $undefined) { upc } }",
        "query($unused: Int) { me { id } }",
        "{ me { ...Missing } }",
        "fragment F on Nothing { id } { me { ...F } }",
        "fragment A on User { ...B } fragment B on User { ...A } { me { ...A } }",
        "fragment Unused on User { id } { me { id } }",
        "query Q { me { id } } query Q { me { name } }",
        "{ me { id } } query Named { me { id } }",
        "{ me @unknown { id } }",
        "{ me { id @include } }",
        "{ me { ... on Product { upc } } }",
        "{ me {",
    ];
    let reference = graphql_js_validate(
        &format!("http://127.0.0.1:{}/graphql", gw.port),
        &queries,
        gw.dir.path(),
    );
    let locations = |errors: &Json| -> Vec<(u64, u64)> {
        errors
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["locations"].as_array().cloned().unwrap_or_default())
            .map(|l| {
                (
                    l["line"].as_u64().unwrap_or(0),
                    l["column"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    // apollo-compiler points at a different token than graphql-js for these
    // (the field rather than its selection set, the argument rather than the
    // variable, the spread rather than the name, the fragment rather than the
    // spread); the decision and the line agree. Any other difference fails.
    let known_location_differences = [
        "{ me { id { deeper } } }",
        "query($n: String) { topProducts(first: $n) { upc } }",
        "{ me { ...Missing } }",
        "fragment A on User { ...B } fragment B on User { ...A } { me { ...A } }",
    ];
    let mut location_differences = Vec::new();
    let mut table = String::new();
    for (query, theirs) in queries
        .iter()
        .zip(reference["results"].as_array().expect("results"))
    {
        let (status, _, ours) = gw.post(
            &json!({"query": query}),
            "application/graphql-response+json",
        );
        let their_errors = &theirs["errors"];
        let they_refuse = their_errors.as_array().is_some_and(|e| !e.is_empty());
        let we_refuse = ours["errors"].as_array().is_some_and(|e| !e.is_empty())
            && ours.get("data").is_none_or(Json::is_null);
        assert_eq!(
            we_refuse, they_refuse,
            "{query}: graphql-js says {theirs}, we answered {status} {ours}"
        );
        if they_refuse {
            assert_eq!(status, 400, "{query}: a request that fails validation is a 400 with application/graphql-response+json");
            let (ours_at, theirs_at) = (locations(&ours["errors"]), locations(their_errors));
            let same_place = ours_at.iter().any(|l| theirs_at.contains(l));
            if !same_place {
                location_differences.push(*query);
            }
            table.push_str(&format!(
                "{query}\n  graphql-js: {} at {theirs_at:?}\n  revmesh:    {} at {ours_at:?}{}\n",
                their_errors[0]["message"],
                ours["errors"][0]["message"],
                if same_place {
                    ""
                } else {
                    "  <- location differs"
                }
            ));
        }
    }
    eprintln!(
        "graphql-js {} vs revmesh, first message each:\n{table}",
        reference["version"]
    );
    assert_eq!(
        location_differences, known_location_differences,
        "error locations that differ from graphql-js's:\n{table}"
    );
}

#[test]
fn interfaces_and_unions_are_planned_across_subgraphs() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::media::start());
    let config = format!("subgraphs:\n  search: {{url: \"http://{a}/search\"}}\n  ratings: {{url: \"http://{a}/ratings\"}}\n", a = subgraphs.addr);
    let gw = Gateway::start_with("media-supergraph.graphql", &config);
    // A union with type conditions, an interface with an inline fragment, a
    // named fragment on the interface, and fields of both concrete types that
    // live in another subgraph (entity fetches per concrete type).
    let got = gw.query(
        "query { \
           search(text: \"a\") { __typename ... on Book { title pages rating } ... on Movie { title minutes rating } } \
           media { id ...M ... on Movie { rating } } \
         } fragment M on Media { title }",
    );
    let expected = json!({"data": {
        "search": [
            {"__typename": "Book", "title": "Dune", "pages": 412, "rating": 5},
            {"__typename": "Movie", "title": "Alien", "minutes": 117, "rating": 4},
            {"__typename": "Book", "title": "Emma", "pages": 300, "rating": null},
        ],
        "media": [
            {"id": "1", "title": "Dune"},
            {"id": "3", "title": "Alien", "rating": 4},
            {"id": "2", "title": "Emma"},
        ],
    }});
    assert_eq!(got, expected, "gateway log:\n{}", gw.log());
    assert!(subgraphs.requests["ratings"].load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

/// A gateway over `supergraph` (tests/data) whose subgraphs `names` are
/// served at `/<name>` by `subgraphs`.
fn gateway_over(
    supergraph: &str,
    subgraphs: &common::Subgraphs,
    names: &[&str],
    extra: &str,
) -> Gateway {
    let mut config = String::from("subgraphs:\n");
    for name in names {
        config.push_str(&format!(
            "  {name}: {{url: \"http://{}/{name}\"}}\n",
            subgraphs.addr
        ));
    }
    config.push_str(extra);
    Gateway::start_with(supergraph, &config)
}

fn requests(subgraphs: &common::Subgraphs, name: &str) -> usize {
    subgraphs.requests[name].load(std::sync::atomic::Ordering::Relaxed)
}

fn message(response: &Json) -> String {
    response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn costly_documents_are_refused_by_the_token_pass_before_validation() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    let gw = Gateway::start(subgraphs.addr, "");
    let limited = |response: &Json, limit: &str| {
        assert_eq!(
            response["errors"][0]["extensions"]["code"], "OPERATION_LIMIT_EXCEEDED",
            "{response}"
        );
        assert!(message(response).contains(limit), "{response}");
        assert!(response.get("data").is_none(), "{response}");
    };
    // A megabyte of aliases (under the 2 MB body limit).
    let mut bomb = String::from("{ ");
    let mut i = 0;
    while bomb.len() < 1 << 20 {
        bomb.push_str(&format!("a{i}: __typename "));
        i += 1;
    }
    bomb.push('}');
    limited(&gw.query(&bomb), "limits.maxAliases");
    // A megabyte of plain fields: the token limit stops the scan.
    let fields = format!("{{ {} }}", "__typename ".repeat((1 << 20) / 11));
    limited(&gw.query(&fields), "limits.maxTokens");
    // Fragments spreading the next one twice per level: 2^40 fields once
    // expanded, refused from their counts.
    let mut doubling = String::from("{ me { ...F0 } }\n");
    for level in 0..40 {
        doubling.push_str(&format!(
            "fragment F{level} on User {{ id ...F{n} ...F{n} }}\n",
            n = level + 1
        ));
    }
    doubling.push_str("fragment F40 on User { id }\n");
    limited(&gw.query(&doubling), "limits.maxExpandedSelections");
    // Too deep, with fields that do not even exist: refused before validation.
    let deep = format!("{}{}", "{ nope ".repeat(30), "}".repeat(30));
    limited(&gw.query(&deep), "limits.maxDepth");
    // An ordinary query still gets its answer.
    assert_eq!(
        gw.query("{ me { id username } }"),
        json!({"data": {"me": {"id": "1", "username": "urigo"}}})
    );

    // The planning budget: with none at all, planning stops at once.
    let no_budget = Gateway::start(subgraphs.addr, "limits: {planningBudget: 0ms}\n");
    limited(&no_budget.query("{ me { id } }"), "limits.planningBudget");
}

#[test]
fn mutation_fields_run_one_after_another_in_document_order() {
    let rt = runtime();
    let (subgraphs, journal) = rt.block_on(common::features::mutations::start());
    let gw = gateway_over(
        "mutations-supergraph.graphql",
        &subgraphs,
        &["ledger", "audit"],
        "",
    );
    let got = gw.query(
        "mutation { a: deposit(amount: 10) b: note(text: \"x\") c: withdraw(amount: 3) d: deposit(amount: 1) e: note(text: \"y\") }",
    );
    assert_eq!(
        got,
        json!({"data": {
            "a": 10,
            "b": "x after [deposit 10]",
            "c": 7,
            "d": 8,
            "e": "y after [deposit 10, note x, withdraw 3, deposit 1]",
        }}),
        "gateway log:\n{}",
        gw.log()
    );
    assert_eq!(
        journal.lock().expect("journal").entries,
        ["deposit 10", "note x", "withdraw 3", "deposit 1", "note y"]
    );
    // c and d are adjacent fields of ledger: one request for both.
    assert_eq!(
        (
            requests(&subgraphs, "ledger"),
            requests(&subgraphs, "audit")
        ),
        (2, 2)
    );
}

#[test]
fn fields_selected_twice_through_fragments_are_merged_as_graphql_js_does() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::fragments::start());
    let gw = gateway_over(
        "fragments-supergraph.graphql",
        &subgraphs,
        &["library", "people"],
        "",
    );
    let got = gw.query(
        "{ items { id author { name } ... on Book { title author { born } } ...B } } \
         fragment B on Book { author { id name } }",
    );
    // On the Book, `author` is collected from three places and its
    // sub-selections merged, in first-seen order; the Map only has the first.
    let expected = json!({"data": {"items": [
        {"id": "b1", "author": {"name": "Frank", "born": 1920, "id": "p1"}, "title": "Dune"},
        {"id": "m1", "author": {"name": "Ann"}},
    ]}});
    assert_eq!(got, expected, "gateway log:\n{}", gw.log());
    assert_eq!(
        serde_json::to_string(&got).expect("text"),
        serde_json::to_string(&expected).expect("text"),
        "field order"
    );
}

#[test]
fn inaccessible_elements_are_hidden_and_refused_when_named() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::inaccessible::start());
    let gw = gateway_over(
        "inaccessible-supergraph.graphql",
        &subgraphs,
        &["shop", "stock"],
        "",
    );
    // An inaccessible enum value coming back from a subgraph is an error at
    // its path, and nulls propagate (the list's items are non-null).
    let got = gw.query("{ products { id name color colors stock(warehouse: \"north\") } }");
    assert_eq!(
        got,
        json!({
            "errors": [
                {"message": "Enum \"Color\" cannot represent value: \"SECRET\"", "path": ["products", 1, "color"]},
                {"message": "Enum \"Color\" cannot represent value: \"SECRET\"", "path": ["products", 1, "colors", 1]},
            ],
            "data": {"products": [
                {"id": "p1", "name": "Lamp", "color": "RED", "colors": ["RED", "GREEN"], "stock": 3},
                {"id": "p2", "name": "Safe", "color": null, "colors": null, "stock": 0},
            ]},
        }),
        "gateway log:\n{}",
        gw.log()
    );
    // Named by a client: a field, a type's root field, an argument, an enum
    // value in a literal and in a variable.
    for (query, variables, named) in [
        ("{ products { id cost } }", json!({}), "cost"),
        ("{ internal { x } }", json!({}), "internal"),
        (
            "{ products { stock(internal: true) } }",
            json!({}),
            "internal",
        ),
        ("{ products(color: SECRET) { id } }", json!({}), "SECRET"),
        (
            "query($c: Color) { products(color: $c) { id } }",
            json!({"c": "SECRET"}),
            "SECRET",
        ),
        (
            "{ products { ... on Internal { x } } }",
            json!({}),
            "Internal",
        ),
    ] {
        let (_, _, body) = gw.post(
            &json!({"query": query, "variables": variables}),
            "application/json",
        );
        assert!(body.get("data").is_none(), "{query}: {body}");
        assert!(message(&body).contains(named), "{query}: {body}");
    }
    // Introspection does not show them.
    let intro = gw.query(
        "{ color: __type(name: \"Color\") { enumValues { name } } internal: __type(name: \"Internal\") { name } \
           product: __type(name: \"Product\") { fields { name args { name } } } \
           thing: __type(name: \"Thing\") { possibleTypes { name } } }",
    );
    assert_eq!(
        intro,
        json!({"data": {
            "color": {"enumValues": [{"name": "RED"}, {"name": "GREEN"}]},
            "internal": null,
            "product": {"fields": [
                {"name": "id", "args": []},
                {"name": "name", "args": []},
                {"name": "color", "args": []},
                {"name": "colors", "args": []},
                {"name": "stock", "args": [{"name": "warehouse"}]},
            ]},
            // An inaccessible member is no member.
            "thing": {"possibleTypes": [{"name": "Product"}]},
        }})
    );
}

#[test]
fn shareable_fields_go_to_the_subgraph_that_resolves_the_whole_path() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::shareable::start());
    let gw = gateway_over(
        "shareable-supergraph.graphql",
        &subgraphs,
        &["a", "b", "c"],
        "",
    );
    // `product` is shareable in a and b; only b has `price`, so b answers
    // the whole field in one request.
    let got = gw.query("{ product(id: \"2\") { name price } }");
    assert_eq!(
        got,
        json!({"data": {"product": {"name": "Desk", "price": 120}}}),
        "gateway log:\n{}",
        gw.log()
    );
    assert_eq!(
        (
            requests(&subgraphs, "a"),
            requests(&subgraphs, "b"),
            requests(&subgraphs, "c")
        ),
        (0, 1, 0)
    );
    // `reviews` lives in c, keyed by `sku`, which a does not know: the
    // gateway gets `sku` from b (by `id`, a key a can supply), then goes to c.
    // `dims` is a value type (no key): a resolves `dims` but not
    // `dims.depth`, so the whole `dims` comes from b.
    let got = gw.query("{ products { name reviews dims { width depth } } }");
    assert_eq!(
        got,
        json!({"data": {"products": [
            {"name": "Chair", "reviews": ["sturdy", "tall"], "dims": {"width": 50, "depth": 55}},
            {"name": "Desk", "reviews": [], "dims": {"width": 140, "depth": 70}},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    // A field a resolves, with the whole path in a: no other subgraph.
    let before = requests(&subgraphs, "b");
    assert_eq!(
        gw.query("{ products { id dims { width } } }"),
        json!({"data": {"products": [{"id": "1", "dims": {"width": 50}}, {"id": "2", "dims": {"width": 140}}]}})
    );
    assert_eq!(requests(&subgraphs, "b"), before);
}

#[test]
fn chained_requires_pass_through_every_subgraph_on_the_way() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::requires::start());
    let gw = gateway_over(
        "requires-supergraph.graphql",
        &subgraphs,
        &["catalog", "physics", "shipping"],
        "",
    );
    // cost (shipping) requires weight (physics), which requires size
    // (catalog); cost has an argument, asked twice under aliases. Product 2
    // has no size, so neither weight nor cost.
    let got = gw.query("{ products { id eu: cost(zone: \"EU\") us: cost(zone: \"US\") } }");
    assert_eq!(
        got,
        json!({"data": {"products": [
            {"id": "1", "eu": 10, "us": 30},
            {"id": "2", "eu": null, "us": null},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    // Required fields with arguments: each is asked of catalog under an
    // alias of its own, beside the client's own `price` with other
    // arguments; `estimate` (price in USD) and `estimateEur` (in EUR) cannot
    // share a representation, so shipping is asked twice.
    assert_eq!(
        gw.query("{ products { id price(currency: \"GBP\") usd: price(currency: \"USD\") estimate estimateEur cost(zone: \"EU\") } }"),
        json!({"data": {"products": [
            {"id": "1", "price": 40, "usd": 50, "estimate": 500, "estimateEur": 90, "cost": 10},
            {"id": "2", "price": null, "usd": null, "estimate": null, "estimateEur": null, "cost": null},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    // `duty` requires `maker { country }`: shipping answers `maker` itself,
    // only catalog `country`. Shipping is asked for the maker in a fetch of
    // its own, catalog for the country, then shipping for the duty.
    assert_eq!(
        gw.query("{ products { id duty maker { country } } }"),
        json!({"data": {"products": [
            {"id": "1", "duty": 5, "maker": {"country": "FR"}},
            {"id": "2", "duty": 7, "maker": {"country": "JP"}},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    // Asked directly, weight needs only the first step.
    assert_eq!(
        gw.query("{ products { weight } }"),
        json!({"data": {"products": [{"weight": 10}, {"weight": null}]}})
    );
    // Below a root field of physics itself, weight still needs size from
    // catalog: physics answers it through `_entities`, with size in the
    // representation, not in its root selection (where it would have no
    // size and answer null). Through cost, the chain starts there too.
    assert_eq!(
        gw.query("{ heaviest { id weight eu: cost(zone: \"EU\") } }"),
        json!({"data": {"heaviest": {"id": "1", "weight": 10, "eu": 10}}}),
        "gateway log:\n{}",
        gw.log()
    );
}

#[test]
fn overridden_fields_come_from_the_overriding_subgraph_and_labels_are_off_by_default() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::overrides::start());
    let query = "{ products { name price tax code } }";
    let gw = gateway_over(
        "override-supergraph.graphql",
        &subgraphs,
        &["pricing", "billing"],
        "",
    );
    assert_eq!(
        gw.query(query),
        json!({"data": {"products": [
            {"name": "product 1", "price": 10, "tax": 1, "code": "from billing"},
            {"name": "product 2", "price": 20, "tax": 1, "code": "from billing"},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    drop(gw);
    // With the label on, `tax` moves to billing too.
    let gw = gateway_over(
        "override-supergraph.graphql",
        &subgraphs,
        &["pricing", "billing"],
        "overrideLabels: [\"percent(25)\"]\n",
    );
    assert_eq!(
        gw.query(query),
        json!({"data": {"products": [
            {"name": "product 1", "price": 10, "tax": 2, "code": "from billing"},
            {"name": "product 2", "price": 20, "tax": 2, "code": "from billing"},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
}

#[test]
fn field_sets_with_nested_selections_and_inline_fragments_load_and_plan() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::fieldsets::start());
    let gw = gateway_over(
        "fieldsets-supergraph.graphql",
        &subgraphs,
        &["pets", "vet"],
        "",
    );
    // The representation carries `pet` with `__typename` and the fields of
    // the inline fragment matching its type.
    assert_eq!(
        gw.query("{ owners { id pet { name } advice } }"),
        json!({"data": {"owners": [
            {"id": "o1", "pet": {"name": "Rex"}, "advice": "walk the dog (barks: true)"},
            {"id": "o2", "pet": {"name": "Tom"}, "advice": "feed the cat (meows: 3)"},
            {"id": "o3", "pet": null, "advice": "no pet (null)"},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
}

#[test]
fn type_conditions_go_only_to_subgraphs_that_define_the_type() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::conditions::start());
    let gw = gateway_over(
        "conditions-supergraph.graphql",
        &subgraphs,
        &["search", "films"],
        "",
    );
    // Each subgraph knows one member of the union; the other's condition
    // must not be sent to it (it would be refused as an unknown type).
    let got = gw.query(
        "{ search { __typename ... on Book { title pages } ... on Movie { title minutes } } \
           trending { __typename ... on Book { title } ... on Movie { title minutes } } }",
    );
    assert_eq!(
        got,
        json!({"data": {
            "search": [{"__typename": "Book", "title": "Dune", "pages": 412}],
            "trending": [{"__typename": "Movie", "title": "Alien", "minutes": 117}],
        }}),
        "gateway log:\n{}",
        gw.log()
    );
}

#[test]
fn interface_objects_add_fields_to_every_implementation() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::interface_object::start());
    let gw = gateway_over(
        "interface-object-supergraph.graphql",
        &subgraphs,
        &["media", "reviews"],
        "",
    );
    // `reviews` on the interface and on one implementation: fetched from
    // `reviews` as `Media` entities.
    assert_eq!(
        gw.query("{ library { id title reviews ... on Book { pages } } }"),
        json!({"data": {"library": [
            {"id": "b1", "title": "Dune", "reviews": ["great"], "pages": 412},
            {"id": "m1", "title": "Alien", "reviews": ["scary", "classic"]},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    assert_eq!(
        gw.query("{ library { ... on Movie { minutes reviews } } }"),
        json!({"data": {"library": [{}, {"minutes": 117, "reviews": ["scary", "classic"]}]}}),
        "gateway log:\n{}",
        gw.log()
    );
    // From `reviews`' own root field, the real type, and the fields under
    // its conditions, come from `media`.
    assert_eq!(
        gw.query("{ topMedia { id reviews __typename title ... on Book { pages } ... on Movie { minutes } } }"),
        json!({"data": {"topMedia": [
            {"id": "m1", "reviews": ["scary", "classic"], "__typename": "Movie", "title": "Alien", "minutes": 117},
            {"id": "b1", "reviews": ["great"], "__typename": "Book", "title": "Dune", "pages": 412},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
}

/// `n` copies of `query` sent together from threads, each with `authorization: <auth(i)>`.
fn concurrent_queries(
    gw: &Gateway,
    n: usize,
    query: &str,
    auth: impl Fn(usize) -> String,
) -> Vec<Json> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let body = json!({"query": query}).to_string();
                let authorization = format!("authorization: {}", auth(i));
                scope.spawn(move || {
                    let (code, _, text) = gw.curl(&[
                        "-H",
                        "content-type: application/json",
                        "-H",
                        &authorization,
                        "--data-binary",
                        &body,
                        &format!("http://127.0.0.1:{}/graphql", gw.port),
                    ]);
                    assert_eq!(code, 200, "{text}");
                    serde_json::from_str::<Json>(&text).expect("JSON answer")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

#[test]
fn identical_query_fetches_in_flight_together_are_sent_once() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::start());
    // Answers held back long enough that all clients' fetches overlap.
    subgraphs.delay_ms["accounts"].store(400, std::sync::atomic::Ordering::Relaxed);
    let gw = Gateway::start(subgraphs.addr, "propagateHeaders: [authorization]\n");
    let expected = json!({"data": {"me": {"id": "1", "username": "urigo"}}});

    let answers = concurrent_queries(&gw, 12, "{ me { id username } }", |_| "Bearer same".into());
    assert!(answers.iter().all(|a| *a == expected), "{answers:?}");
    let shared = requests(&subgraphs, "accounts");
    assert!(
        shared < 12 / 2,
        "12 identical concurrent queries made {shared} subgraph requests"
    );
    let metrics = gw.get("/metrics").1;
    assert!(
        metrics.contains("revmesh_graphql_fetches_shared_total{subgraph=\"accounts\"}"),
        "{metrics}"
    );

    // A forwarded header is part of what is sent: different callers never share.
    let before = requests(&subgraphs, "accounts");
    let answers = concurrent_queries(&gw, 6, "{ me { id username } }", |i| {
        format!("Bearer user-{i}")
    });
    assert!(answers.iter().all(|a| *a == expected), "{answers:?}");
    assert_eq!(requests(&subgraphs, "accounts") - before, 6);

    // Off by configuration (globally, or per subgraph): every query is sent.
    let headers = "propagateHeaders: [authorization]\n";
    for config in [
        common::config_for(
            subgraphs.addr,
            &format!("{headers}dedupeSubgraphRequests: false\n"),
        ),
        common::config_for(subgraphs.addr, headers).replace(
            "/accounts\", timeout: 5s}",
            "/accounts\", timeout: 5s, dedupe: false}",
        ),
    ] {
        let unshared = Gateway::start_with("supergraph.graphql", &config);
        let before = requests(&subgraphs, "accounts");
        let answers = concurrent_queries(&unshared, 6, "{ me { id username } }", |_| {
            "Bearer same".into()
        });
        assert!(answers.iter().all(|a| *a == expected), "{answers:?}");
        assert_eq!(requests(&subgraphs, "accounts") - before, 6, "{config}");
    }
}

#[test]
fn identical_mutations_in_flight_together_are_each_sent() {
    let rt = runtime();
    let (subgraphs, journal) = rt.block_on(common::features::mutations::start());
    subgraphs.delay_ms["ledger"].store(300, std::sync::atomic::Ordering::Relaxed);
    let gw = gateway_over(
        "mutations-supergraph.graphql",
        &subgraphs,
        &["ledger", "audit"],
        "",
    );
    let answers = concurrent_queries(&gw, 8, "mutation { deposit(amount: 1) }", |_| {
        "Bearer same".into()
    });
    assert!(
        answers.iter().all(|a| a["data"]["deposit"].is_number()),
        "{answers:?}"
    );
    assert_eq!(requests(&subgraphs, "ledger"), 8);
    assert_eq!(journal.lock().expect("journal").balance, 8);
}

#[test]
fn interface_fields_another_subgraph_resolves_per_implementation_are_fetched_per_type() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::implementations::start());
    let gw = gateway_over(
        "implementations-supergraph.graphql",
        &subgraphs,
        &["catalog", "stock"],
        "",
    );
    // `inStock` is a field of the interface, owned by `stock`, which has a
    // key for each implementation and none for `Product`; `title` is
    // catalog's for books and, overridden, stock's for magazines.
    assert_eq!(
        gw.query("{ products { id title inStock } }"),
        json!({"data": {"products": [
            {"id": "b1", "title": "Dune", "inStock": true},
            {"id": "m1", "title": "Wired (from stock)", "inStock": false},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    // Beside fields under type conditions and `__typename`.
    assert_eq!(
        gw.query(
            "{ products { __typename inStock ... on Book { pages } ... on Magazine { issue } } }"
        ),
        json!({"data": {"products": [
            {"__typename": "Book", "inStock": true, "pages": 412},
            {"__typename": "Magazine", "inStock": false, "issue": 7},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    assert!(requests(&subgraphs, "stock") >= 2);
}

#[test]
fn fields_a_subgraph_types_differently_under_one_key_are_aliased_for_it() {
    let rt = runtime();
    let (subgraphs, sent) = rt.block_on(common::features::type_mismatch::start());
    let gw = gateway_over(
        "type-mismatch-supergraph.graphql",
        &subgraphs,
        &["accounts", "directory"],
        "",
    );
    // Valid against the supergraph (`id: ID` on both members); in
    // `accounts`, User's is `ID!`.
    let accounts =
        "accounts { ... on User { id name friends { ... on User { id } ... on Bot { id name } } } \
                    ... on Bot { id friends { ... on User { id } ... on Bot { id } } } }";
    let got = gw.query(&format!("{{ users {{ id name }} {accounts} }}"));
    assert_eq!(
        got,
        json!({"data": {
            "users": [{"id": "u1", "name": "Ada"}, {"id": "u2", "name": "Grace"}],
            "accounts": [
                {"id": "u1", "name": "Ada", "friends": [{"id": "u2"}, {"id": "b1", "name": "helper"}]},
                {"id": "u2", "name": "Grace", "friends": [{"id": "u1"}, {"id": "b1", "name": "helper"}]},
                {"id": "b1", "friends": [{"id": "u1"}]},
            ],
        }}),
        "gateway log:\n{}",
        gw.log()
    );
    // The reference: graphql-js over `accounts`'s own schema refuses the
    // client's selection as it stands and accepts what the gateway sent.
    let sent: Vec<String> = sent.lock().expect("queries").clone();
    assert!(
        sent.iter().any(|q| q.contains("_rm_alias_")),
        "no alias in what accounts was sent: {sent:?}"
    );
    let unaliased = format!("{{ {accounts} }}");
    let mut queries: Vec<&str> = vec![&unaliased];
    queries.extend(sent.iter().map(String::as_str));
    let reference = graphql_js_validate(
        &format!("http://{}/accounts", subgraphs.addr),
        &queries,
        gw.dir.path(),
    );
    let results = reference["results"].as_array().expect("results");
    let errors = |i: usize| results[i]["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors(0).iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("conflict"))),
        "graphql-js accepted the unaliased selection: {}",
        results[0]
    );
    for (i, query) in sent.iter().enumerate() {
        assert!(
            errors(i + 1).is_empty(),
            "graphql-js refuses {query}: {}",
            results[i + 1]
        );
    }
}

#[test]
fn a_shared_root_field_of_a_type_with_no_key_is_asked_of_each_subgraph_and_merged() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::shared_root::start());
    let gw = gateway_over(
        "shared-root-supergraph.graphql",
        &subgraphs,
        &["catalog", "pricing"],
        "",
    );
    let got = gw.query(
        "{ product { id category { name } price { amount currency } } \
           products { id price { amount } category { id } } }",
    );
    assert_eq!(
        got,
        json!({"data": {
            "product": {"id": "p1", "category": {"name": "Chairs"}, "price": {"amount": 40, "currency": "EUR"}},
            "products": [
                {"id": "p1", "price": {"amount": 40}, "category": {"id": "c-p1"}},
                {"id": "p2", "price": {"amount": 120}, "category": {"id": "c-p2"}},
            ],
        }}),
        "gateway log:\n{}",
        gw.log()
    );
    assert_eq!(
        (
            requests(&subgraphs, "catalog"),
            requests(&subgraphs, "pricing")
        ),
        (1, 1)
    );
    // A root field one subgraph answers whole is not split.
    let before = requests(&subgraphs, "pricing");
    let got = gw.query("{ products { id category { name } } }");
    assert_eq!(
        got["data"]["products"][1],
        json!({"id": "p2", "category": {"name": "Desks"}})
    );
    assert_eq!(requests(&subgraphs, "pricing"), before);
}

#[test]
fn type_conditions_follow_each_subgraphs_own_interface_implementations() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::implements_per_graph::start());
    let gw = gateway_over(
        "implements-per-graph-supergraph.graphql",
        &subgraphs,
        &["shop", "warranty"],
        "",
    );
    // A Lamp is a Node in the supergraph (through `warranty`), not in
    // `shop`, which returns it: `... on Node` must still reach it, and
    // `... on Lamp` below Node must not be sent to `shop` (it refuses it).
    let got = gw.query(
        "{ items { ... on Node { id } ... on Lamp { years } } \
           nodes { ... on Lamp { years } ... on Kettle { volume } } }",
    );
    assert_eq!(
        got,
        json!({"data": {
            "items": [{"id": "k1"}, {"id": "l1", "years": 2}],
            "nodes": [{"volume": 2}],
        }}),
        "gateway log:\n{}",
        gw.log()
    );
}

#[test]
fn fields_two_hops_away_are_reached_through_keys_other_subgraphs_answer() {
    let rt = runtime();
    let subgraphs = rt.block_on(common::features::hops::start());
    let gw = gateway_over(
        "hops-supergraph.graphql",
        &subgraphs,
        &["catalog", "categories", "details", "makers", "tags"],
        "",
    );
    // `category` comes from `details` (its `details`) and, as a hop through
    // the product's key, from `tags` (its `id`), which then reaches `name`
    // in `categories` by that id. The product's id, `@external` in both,
    // is already in the representation and is not asked again.
    assert_eq!(
        gw.query("{ productFromCatalog(id: \"1\") { id name category { id name details } } }"),
        json!({"data": {"productFromCatalog": {
            "id": "1",
            "name": "Product#1",
            "category": {"id": "c1", "name": "Category#c1", "details": "Details for Product#1"},
        }}}),
        "gateway log:\n{}",
        gw.log()
    );
    // `featured` provides `maker { id }`, which `tags` declares `@external`:
    // the provided id is the key `makers` resolves `country` by.
    assert_eq!(
        gw.query("{ featured { maker { id country } } }"),
        json!({"data": {"featured": [
            {"maker": {"id": "m1", "country": "FR"}},
            {"maker": {"id": "m2", "country": "JP"}},
        ]}}),
        "gateway log:\n{}",
        gw.log()
    );
    assert!(requests(&subgraphs, "categories") >= 1 && requests(&subgraphs, "makers") >= 1);
}

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
        std::fs::copy(
            common::data_dir().join(supergraph),
            dir.path().join("supergraph.graphql"),
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
        let (code, head, text) = self.curl(&[
            "-H",
            "content-type: application/json",
            "-H",
            &format!("accept: {accept}"),
            "--data-binary",
            &body.to_string(),
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
    let file = gw.dir.path().join("queries.json");
    std::fs::write(&file, serde_json::to_string(&queries).expect("json")).expect("write");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphql-js/validate.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(graphql_js())
        .arg(format!("http://127.0.0.1:{}/graphql", gw.port))
        .arg(&file)
        .output()
        .expect("node is installed (apt-get install nodejs)");
    assert!(
        out.status.success(),
        "graphql-js: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Json = serde_json::from_slice(&out.stdout).expect("graphql-js output");
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

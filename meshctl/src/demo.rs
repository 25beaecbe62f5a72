//! `meshctl demo`: the local mesh on loopback, with no cluster. In one
//! process it runs:
//! * a control-plane revision (`demo`) in dir mode, with its own CA, serving
//!   xDS and certificates over TLS;
//! * the demo app `hello` (namespace `demo`, service account `hello`) behind
//!   its sidecar, which terminates mTLS and passes the caller's identity on;
//! * a `client` sidecar whose outbound listener the user calls, routing by
//!   Host like a captured app's traffic;
//! * the GraphQL gateway over two Federation subgraphs (accounts, reviews).
//!
//! Loopback addresses keep the pods apart: 127.0.0.2 is hello's pod,
//! 127.0.0.3 the client's, and 127.0.0.4 the subgraphs'.

use anyhow::Context;
use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema, ID};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Ports are taken from here up (base+1 client outbound, +40 GraphQL, …).
    #[arg(long, default_value_t = 16000)]
    pub port_base: u16,
    /// Check that traffic flows through the mesh and GraphQL answers, then exit.
    #[arg(long)]
    pub check: bool,
}

struct Ports {
    base: u16,
}

impl Ports {
    fn at(&self, ip: [u8; 4], offset: u16) -> SocketAddr {
        SocketAddr::from((ip, self.base + offset))
    }
}

const CLIENT: [u8; 4] = [127, 0, 0, 1];
const HELLO_POD: [u8; 4] = [127, 0, 0, 2];
const CLIENT_POD: [u8; 4] = [127, 0, 0, 3];
const SUBGRAPHS: [u8; 4] = [127, 0, 0, 4];

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn wait_for(what: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(Instant::now() < until, "{what} did not start listening on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn http(method: &str, url: &str, host: Option<&str>, body: Option<String>) -> anyhow::Result<(u16, String)> {
    let uri: hyper::Uri = url.parse()?;
    let addr = format!("{}:{}", uri.host().unwrap_or("127.0.0.1"), uri.port_u16().unwrap_or(80));
    let tcp = tokio::net::TcpStream::connect(&addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")).header("host", host.unwrap_or(&addr));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let resp = sender.send_request(req.body(Full::new(Bytes::from(body.unwrap_or_default())))?).await?;
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    Ok((status, text))
}

/// The demo app: says hello, and who called (as its sidecar vouches).
async fn hello_app(listener: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let caller = req.headers().get("x-revmesh-peer-identity").and_then(|v| v.to_str().ok()).unwrap_or("(no mTLS)").to_string();
                let body = serde_json::json!({"message": "hello from the mesh", "caller": caller}).to_string() + "\n";
                let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

// ---- two Federation subgraphs for the gateway ----

struct Account(&'static str, &'static str);

#[Object(name = "User")]
impl Account {
    async fn id(&self) -> ID {
        ID(self.0.into())
    }
    async fn name(&self) -> &str {
        self.1
    }
}

const PEOPLE: [(&str, &str); 2] = [("1", "Ada"), ("2", "Linus")];

struct AccountsQuery;

#[Object(name = "Query")]
impl AccountsQuery {
    async fn users(&self) -> Vec<Account> {
        PEOPLE.iter().map(|(i, n)| Account(i, n)).collect()
    }
    #[graphql(entity)]
    async fn find_user_by_id(&self, id: ID) -> Option<Account> {
        PEOPLE.iter().find(|(i, _)| *i == id.as_str()).map(|(i, n)| Account(i, n))
    }
}

struct Reviewer(String);
struct Review(&'static str);

#[Object(name = "Review")]
impl Review {
    async fn body(&self) -> &str {
        self.0
    }
}

#[Object(name = "User")]
impl Reviewer {
    async fn id(&self) -> ID {
        ID(self.0.clone())
    }
    async fn reviews(&self) -> Vec<Review> {
        match self.0.as_str() {
            "1" => vec![Review("Upgrades should be boring."), Review("They are, here.")],
            _ => vec![Review("Ship it.")],
        }
    }
}

struct ReviewsQuery;

#[Object(name = "Query")]
impl ReviewsQuery {
    #[graphql(entity)]
    async fn find_user_by_id(&self, id: ID) -> Reviewer {
        Reviewer(id.0)
    }
}

fn supergraph(accounts: SocketAddr, reviews: SocketAddr) -> String {
    format!(
        r#"schema @link(url: "https://specs.apollo.dev/link/v1.0") @link(url: "https://specs.apollo.dev/join/v0.3", for: EXECUTION) {{ query: Query }}
directive @join__field(graph: join__Graph, requires: join__FieldSet, provides: join__FieldSet, type: String, external: Boolean, override: String, usedOverridden: Boolean) repeatable on FIELD_DEFINITION | INPUT_FIELD_DEFINITION
directive @join__graph(name: String!, url: String!) on ENUM_VALUE
directive @join__type(graph: join__Graph!, key: join__FieldSet, extension: Boolean! = false, resolvable: Boolean! = true, isInterfaceObject: Boolean! = false) repeatable on OBJECT | INTERFACE | UNION | ENUM | INPUT_OBJECT | SCALAR
directive @link(url: String, as: String, for: link__Purpose, import: [link__Import]) repeatable on SCHEMA
scalar join__FieldSet
scalar link__Import
enum link__Purpose {{ SECURITY EXECUTION }}
enum join__Graph {{
  ACCOUNTS @join__graph(name: "accounts", url: "http://{accounts}/graphql")
  REVIEWS @join__graph(name: "reviews", url: "http://{reviews}/graphql")
}}
type Query @join__type(graph: ACCOUNTS) @join__type(graph: REVIEWS) {{
  users: [User] @join__field(graph: ACCOUNTS)
}}
type User @join__type(graph: ACCOUNTS, key: "id") @join__type(graph: REVIEWS, key: "id") {{
  id: ID!
  name: String @join__field(graph: ACCOUNTS)
  reviews: [Review] @join__field(graph: REVIEWS)
}}
type Review @join__type(graph: REVIEWS) {{
  body: String
}}
"#
    )
}

type Execute = Arc<dyn Fn(async_graphql::Request) -> futures::future::BoxFuture<'static, async_graphql::Response> + Send + Sync>;

async fn serve_subgraph(listener: tokio::net::TcpListener, execute: Execute) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let execute = Arc::clone(&execute);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let execute = Arc::clone(&execute);
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let answer = match serde_json::from_slice::<async_graphql::Request>(&body) {
                        Ok(r) => serde_json::to_vec(&execute(r).await).unwrap_or_default(),
                        Err(e) => serde_json::json!({"errors": [{"message": e.to_string()}]}).to_string().into_bytes(),
                    };
                    let mut r = hyper::Response::new(Full::new(Bytes::from(answer)));
                    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

fn executor<Q: async_graphql::ObjectType + 'static>(query: Q) -> Execute {
    let schema = Schema::build(query, EmptyMutation, EmptySubscription).enable_federation().finish();
    Arc::new(move |req| {
        let schema = schema.clone();
        Box::pin(async move { schema.execute(req).await })
    })
}

fn sidecar_args(args: &[String]) -> anyhow::Result<sidecar::run::RunArgs> {
    let cli = sidecar::run::Cli::try_parse_from(std::iter::once("sidecar".to_string()).chain(std::iter::once("run".to_string())).chain(args.iter().cloned()))?;
    match cli.command {
        sidecar::run::Command::Run(a) => Ok(*a),
        sidecar::run::Command::Init(_) | sidecar::run::Command::Wait(_) => anyhow::bail!("not a run command"),
    }
}

pub fn demo(args: &DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.port_base <= 65_000, "--port-base {} leaves no room for the demo's ports (at most 65000)", args.port_base);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: &DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    let p = Ports { base: args.port_base };
    let dir = std::env::temp_dir().join(format!("revmesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("mesh")).with_context(|| format!("creating {}", dir.display()))?;
    let s = |a: SocketAddr| a.to_string();

    // The mesh's CA, and one bootstrap token per workload.
    let ca = control_plane::ca::Ca::generate("cluster.local")?;
    write(&dir.join("ca.crt"), ca.root_pem())?;
    write(&dir.join("ca.key"), &ca.key_pem())?;
    let (client_token, hello_token) = (random_token()?, random_token()?);
    write(&dir.join("tokens"), &format!("{client_token} demo/client\n{hello_token} demo/hello\n"))?;
    write(&dir.join("client.token"), &client_token)?;
    write(&dir.join("hello.token"), &hello_token)?;

    let hello_inbound = p.at(HELLO_POD, 6);
    let hello_app_addr = p.at(HELLO_POD, 80);
    write(
        &dir.join("mesh/hello.yaml"),
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: hello, namespace: demo}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: {}}}]\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: hello, namespace: demo}}\nsubsets:\n- addresses: [{{ip: {}}}]\n  ports: [{{name: http, port: {}}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: hello-0, namespace: demo, labels: {{revmesh.io/rev: demo}}}}\nspec: {{serviceAccountName: hello}}\nstatus: {{podIP: {}}}\n",
            hello_inbound.port(),
            hello_inbound.ip(),
            hello_inbound.port(),
            hello_inbound.ip()
        ),
    )?;

    // The control plane.
    let tls = p.at(CLIENT, 12);
    let settings = control_plane::run::Settings::try_parse_from([
        "control-plane".to_string(),
        "--revision".into(),
        "demo".into(),
        "--source".into(),
        format!("dir:{}", dir.join("mesh").display()),
        "--xds-listen".into(),
        s(p.at(CLIENT, 10)),
        "--tls-listen".into(),
        s(tls),
        "--debug-listen".into(),
        s(p.at(CLIENT, 14)),
        "--ca-cert".into(),
        dir.join("ca.crt").display().to_string(),
        "--ca-key".into(),
        dir.join("ca.key").display().to_string(),
        "--ca-bootstrap-tokens".into(),
        dir.join("tokens").display().to_string(),
    ])?;
    tokio::spawn(async move {
        if let Err(e) = control_plane::run::run(settings).await {
            eprintln!("control plane: {e:#}");
        }
    });
    wait_for("the control plane", tls).await?;

    // The hello app and its sidecar (inbound mTLS → the app).
    tokio::spawn(hello_app(tokio::net::TcpListener::bind(hello_app_addr).await.with_context(|| format!("binding {hello_app_addr}"))?));
    let no_log_level: sidecar::admin::SetLogLevel = Arc::new(|_| Err("meshctl demo sets the log level with RUST_LOG".to_string()));
    let sidecar = |name: &str, pod: [u8; 4], outbound: SocketAddr, inbound: Option<SocketAddr>| -> anyhow::Result<sidecar::run::RunArgs> {
        let mut a = vec![
            "--revision".to_string(),
            "demo".into(),
            "--control-plane".into(),
            s(tls),
            "--control-plane-name".into(),
            "control-plane-demo.revmesh-system.svc".into(),
            "--ca-root".into(),
            dir.join("ca.crt").display().to_string(),
            "--token-path".into(),
            dir.join(format!("{name}.token")).display().to_string(),
            "--capture".into(),
            "false".into(),
            "--outbound-listen".into(),
            s(outbound),
            "--admin-listen".into(),
            s(p.at(pod, 0)),
            "--metrics-listen".into(),
            s(p.at(pod, 20)),
            "--ready-listen".into(),
            s(p.at(pod, 21)),
            "--pod-name".into(),
            format!("{name}-0"),
            "--pod-namespace".into(),
            "demo".into(),
            "--service-account".into(),
            name.into(),
            "--workload".into(),
            name.into(),
        ];
        if let Some(i) = inbound {
            a.extend(["--inbound-listen".into(), s(hello_inbound), "--inbound-target".into(), s(i)]);
        }
        sidecar_args(&a)
    };
    let hello_sidecar = sidecar("hello", HELLO_POD, p.at(HELLO_POD, 1), Some(hello_app_addr))?;
    let client_sidecar = sidecar("client", CLIENT_POD, p.at(CLIENT, 1), None)?;
    for args in [hello_sidecar, client_sidecar] {
        let set = Arc::clone(&no_log_level);
        tokio::spawn(async move {
            if let Err(e) = sidecar::run::run(args, set).await {
                eprintln!("sidecar: {e:#}");
            }
        });
    }

    // The GraphQL gateway and its subgraphs.
    let (accounts, reviews) = (p.at(SUBGRAPHS, 41), p.at(SUBGRAPHS, 42));
    tokio::spawn(serve_subgraph(tokio::net::TcpListener::bind(accounts).await.with_context(|| format!("binding {accounts}"))?, executor(AccountsQuery)));
    tokio::spawn(serve_subgraph(tokio::net::TcpListener::bind(reviews).await.with_context(|| format!("binding {reviews}"))?, executor(ReviewsQuery)));
    write(&dir.join("supergraph.graphql"), &supergraph(accounts, reviews))?;
    let graphql = p.at(CLIENT, 40);
    let gateway_args = graphql_gateway::run::Args::try_parse_from(["graphql-gateway".to_string(), "--supergraph".into(), dir.join("supergraph.graphql").display().to_string(), "--listen".into(), s(graphql)])?;
    tokio::spawn(async move {
        if let Err(e) = graphql_gateway::run::serve(gateway_args).await {
            eprintln!("graphql gateway: {e:#}");
        }
    });

    // Ready when both proxies have config and certificates.
    for (name, ready) in [("hello", p.at(HELLO_POD, 21)), ("client", p.at(CLIENT_POD, 21))] {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if http("GET", &format!("http://{ready}/healthz/ready"), None, None).await.is_ok_and(|(code, _)| code == 200) {
                break;
            }
            anyhow::ensure!(Instant::now() < until, "the {name} sidecar did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_for("the GraphQL gateway", graphql).await?;

    let outbound = p.at(CLIENT, 1);
    let (code, hello) = http("GET", &format!("http://{outbound}/"), Some("hello.demo"), None).await?;
    let query = r#"{"query":"{ users { name reviews { body } } }"}"#;
    let (gql_code, answer) = http("POST", &format!("http://{graphql}/graphql"), None, Some(query.to_string())).await?;
    let mesh_ok = code == 200 && hello.contains("spiffe://cluster.local/ns/demo/sa/client");
    let graphql_ok = gql_code == 200 && answer.contains("Upgrades should be boring.");

    println!("Revmesh demo: a control plane, two sidecars with mTLS, and the GraphQL gateway, on loopback.\n");
    println!("Through the mesh (client sidecar → mTLS → hello's sidecar → hello):");
    println!("  curl -H 'Host: hello.demo' http://{outbound}/");
    println!("  → {}", hello.trim());
    println!("GraphQL (accounts and reviews subgraphs behind one schema):");
    println!("  curl -H 'content-type: application/json' -d '{query}' http://{graphql}/graphql");
    println!("  → {}", answer.trim());
    println!("Look inside:");
    println!("  curl http://{}/debug/syncz                # the proxies, their ACKed versions", p.at(CLIENT, 14));
    println!("  curl http://{}/config_dump                # the client proxy's routes and clusters", p.at(CLIENT_POD, 0));
    println!("  curl http://{}/metrics                    # istio_requests_total with the caller's identity", p.at(HELLO_POD, 20));
    if args.check {
        let _ = std::fs::remove_dir_all(&dir);
        anyhow::ensure!(mesh_ok, "the mesh check failed: HTTP {code}: {hello}");
        anyhow::ensure!(graphql_ok, "the GraphQL check failed: HTTP {gql_code}: {answer}");
        println!("\ncheck passed");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("\nCtrl-C stops everything. Files are in {}.", dir.display());
    tokio::signal::ctrl_c().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(std::process::ExitCode::SUCCESS)
}

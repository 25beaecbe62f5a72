//! The benchmark's four Federation subgraphs (accounts, inventory, products,
//! reviews), written with async-graphql, serving data derived from the
//! benchmark's expected response. One HTTP server, one path per subgraph.
#![allow(dead_code)]

use async_graphql::{Context, EmptyMutation, EmptySubscription, Object, Schema, ID};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub fn data_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

pub mod supergraph_text;

#[derive(Debug, Clone, Default)]
pub struct UserRow {
    pub id: String,
    pub name: Option<String>,
    pub username: Option<String>,
    pub reviews: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ProductRow {
    pub upc: String,
    pub name: Option<String>,
    pub price: Option<i64>,
    pub weight: Option<i64>,
    pub in_stock: Option<bool>,
    pub shipping_estimate: Option<i64>,
    pub reviews: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ReviewRow {
    pub id: String,
    pub body: Option<String>,
    pub product: Option<String>,
    pub author: Option<String>,
}

/// Every row the expected response shows.
///
/// Rows are shared (`Arc`), so a resolver hands one out without copying it.
#[derive(Debug, Default)]
pub struct BenchData {
    pub users: Vec<Arc<UserRow>>,
    pub products: BTreeMap<String, Arc<ProductRow>>,
    pub top_products: Vec<String>,
    pub reviews: BTreeMap<String, Arc<ReviewRow>>,
}

/// Rows while they are gathered from the expected response.
#[derive(Default)]
struct Rows {
    products: BTreeMap<String, ProductRow>,
    reviews: BTreeMap<String, ReviewRow>,
}

fn ids(list: Option<&Json>, key: &str) -> Vec<String> {
    list.and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r[key].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl BenchData {
    pub fn load() -> BenchData {
        let expected: Json = serde_json::from_str(
            &std::fs::read_to_string(data_dir().join("expected-response.json"))
                .expect("expected response"),
        )
        .expect("json");
        let mut d = Rows::default();
        let mut users: BTreeMap<String, UserRow> = BTreeMap::new();
        fn walk(v: &Json, d: &mut Rows, users: &mut BTreeMap<String, UserRow>) {
            match v {
                Json::Array(items) => items.iter().for_each(|i| walk(i, d, users)),
                Json::Object(o) => {
                    if let Some(upc) = o.get("upc").and_then(Json::as_str) {
                        let p = d.products.entry(upc.into()).or_default();
                        p.upc = upc.into();
                        p.name = o
                            .get("name")
                            .and_then(Json::as_str)
                            .map(str::to_string)
                            .or(p.name.take());
                        p.price = o.get("price").and_then(Json::as_i64).or(p.price);
                        p.weight = o.get("weight").and_then(Json::as_i64).or(p.weight);
                        p.in_stock = o.get("inStock").and_then(Json::as_bool).or(p.in_stock);
                        p.shipping_estimate = o
                            .get("shippingEstimate")
                            .and_then(Json::as_i64)
                            .or(p.shipping_estimate);
                        if o.contains_key("reviews") {
                            p.reviews = ids(o.get("reviews"), "id");
                        }
                    } else if let Some(id) = o.get("id").and_then(Json::as_str) {
                        if o.contains_key("body") {
                            let r = d.reviews.entry(id.into()).or_default();
                            r.id = id.into();
                            r.body = o.get("body").and_then(Json::as_str).map(str::to_string);
                            if let Some(p) = o.get("product").and_then(|p| p["upc"].as_str()) {
                                r.product = Some(p.into());
                            }
                            if let Some(a) = o.get("author").and_then(|a| a["id"].as_str()) {
                                r.author = Some(a.into());
                            }
                        } else if o.contains_key("username") {
                            let u = users.entry(id.into()).or_default();
                            u.id = id.into();
                            u.name = o
                                .get("name")
                                .and_then(Json::as_str)
                                .map(str::to_string)
                                .or(u.name.take());
                            u.username = o
                                .get("username")
                                .and_then(Json::as_str)
                                .map(str::to_string)
                                .or(u.username.take());
                            if o.contains_key("reviews") {
                                u.reviews = ids(o.get("reviews"), "id");
                            }
                        }
                    }
                    o.values().for_each(|x| walk(x, d, users));
                }
                _ => {}
            }
        }
        walk(&expected["data"], &mut d, &mut users);
        // Review → product and author come from where reviews are nested.
        for u in users.values() {
            for r in &u.reviews {
                if let Some(row) = d.reviews.get_mut(r) {
                    row.author.get_or_insert_with(|| u.id.clone());
                }
            }
        }
        for p in d.products.values() {
            for r in &p.reviews {
                if let Some(row) = d.reviews.get_mut(r) {
                    row.product.get_or_insert_with(|| p.upc.clone());
                }
            }
        }
        BenchData {
            users: ids(expected["data"].get("users"), "id")
                .into_iter()
                .filter_map(|id| users.get(&id).cloned())
                .map(Arc::new)
                .collect(),
            products: d
                .products
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
            top_products: ids(expected["data"].get("topProducts"), "upc"),
            reviews: d
                .reviews
                .into_iter()
                .map(|(k, v)| (k, Arc::new(v)))
                .collect(),
        }
    }

    fn user(&self, id: &str) -> Option<&Arc<UserRow>> {
        self.users.iter().find(|u| u.id == id)
    }
}

type Data = Arc<BenchData>;

fn data<'a>(ctx: &Context<'a>) -> &'a Data {
    ctx.data_unchecked::<Data>()
}

// ---- accounts ----

pub struct AccountUser(Arc<UserRow>);

#[Object(name = "User")]
impl AccountUser {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }
    async fn username(&self) -> Option<&str> {
        self.0.username.as_deref()
    }
    async fn birthday(&self) -> Option<i32> {
        Some(1234567890)
    }
}

pub struct AccountsQuery;

#[Object(name = "Query")]
impl AccountsQuery {
    async fn me(&self, ctx: &Context<'_>) -> Option<AccountUser> {
        data(ctx).users.first().cloned().map(AccountUser)
    }
    async fn user(&self, ctx: &Context<'_>, id: ID) -> Option<AccountUser> {
        data(ctx).user(&id).cloned().map(AccountUser)
    }
    async fn users(&self, ctx: &Context<'_>) -> Option<Vec<Option<AccountUser>>> {
        Some(
            data(ctx)
                .users
                .iter()
                .cloned()
                .map(|u| Some(AccountUser(u)))
                .collect(),
        )
    }
    #[graphql(entity)]
    async fn find_user_by_id(&self, ctx: &Context<'_>, id: ID) -> Option<AccountUser> {
        data(ctx).user(&id).cloned().map(AccountUser)
    }
}

// ---- products ----

pub struct CatalogProduct(Arc<ProductRow>);

#[Object(name = "Product")]
impl CatalogProduct {
    async fn upc(&self) -> &str {
        &self.0.upc
    }
    async fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }
    async fn price(&self) -> Option<i64> {
        self.0.price
    }
    async fn weight(&self) -> Option<i64> {
        self.0.weight
    }
}

pub struct ProductsQuery;

#[Object(name = "Query")]
impl ProductsQuery {
    async fn top_products(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 5)] first: i32,
    ) -> Option<Vec<Option<CatalogProduct>>> {
        let d = data(ctx);
        Some(
            d.top_products
                .iter()
                .take(usize::try_from(first).unwrap_or(0))
                .filter_map(|u| d.products.get(u).cloned())
                .map(|p| Some(CatalogProduct(p)))
                .collect(),
        )
    }
    #[graphql(entity)]
    async fn find_product_by_upc(&self, ctx: &Context<'_>, upc: String) -> Option<CatalogProduct> {
        data(ctx).products.get(&upc).cloned().map(CatalogProduct)
    }
}

// ---- inventory ----

pub struct StockProduct {
    row: Arc<ProductRow>,
    price: Option<i64>,
    weight: Option<i64>,
}

#[Object(name = "Product")]
impl StockProduct {
    async fn upc(&self) -> &str {
        &self.row.upc
    }
    #[graphql(external)]
    async fn price(&self) -> Option<i64> {
        self.price
    }
    #[graphql(external)]
    async fn weight(&self) -> Option<i64> {
        self.weight
    }
    async fn in_stock(&self) -> Option<bool> {
        self.row.in_stock
    }
    /// Proves @requires: the representation must carry price and weight.
    #[graphql(requires = "price weight")]
    async fn shipping_estimate(&self) -> async_graphql::Result<Option<i64>> {
        if self.price.is_none() || self.weight.is_none() {
            return Err("shippingEstimate needs price and weight in the representation".into());
        }
        Ok(self.row.shipping_estimate)
    }
}

pub struct InventoryQuery;

#[Object(name = "Query")]
impl InventoryQuery {
    #[graphql(entity)]
    async fn find_product_by_upc(
        &self,
        ctx: &Context<'_>,
        #[graphql(key)] upc: String,
        price: Option<i64>,
        weight: Option<i64>,
    ) -> Option<StockProduct> {
        data(ctx)
            .products
            .get(&upc)
            .cloned()
            .map(|row| StockProduct { row, price, weight })
    }
}

// ---- reviews ----

pub struct ReviewObj(Arc<ReviewRow>);
pub struct ReviewUser(String);
pub struct ReviewProduct(String);

#[Object(name = "Review")]
impl ReviewObj {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn body(&self) -> Option<&str> {
        self.0.body.as_deref()
    }
    async fn product(&self) -> Option<ReviewProduct> {
        self.0.product.clone().map(ReviewProduct)
    }
    #[graphql(provides = "username")]
    async fn author(&self) -> Option<ReviewUser> {
        self.0.author.clone().map(ReviewUser)
    }
}

#[Object(name = "User")]
impl ReviewUser {
    async fn id(&self) -> ID {
        ID(self.0.clone())
    }
    #[graphql(external)]
    async fn username(&self, ctx: &Context<'_>) -> Option<String> {
        data(ctx).user(&self.0).and_then(|u| u.username.clone())
    }
    async fn reviews(&self, ctx: &Context<'_>) -> Option<Vec<Option<ReviewObj>>> {
        let d = data(ctx);
        Some(
            d.user(&self.0)
                .map(|u| {
                    u.reviews
                        .iter()
                        .filter_map(|r| d.reviews.get(r).cloned())
                        .map(|r| Some(ReviewObj(r)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}

#[Object(name = "Product")]
impl ReviewProduct {
    async fn upc(&self) -> &str {
        &self.0
    }
    async fn reviews(&self, ctx: &Context<'_>) -> Option<Vec<Option<ReviewObj>>> {
        let d = data(ctx);
        Some(
            d.products
                .get(&self.0)
                .map(|p| {
                    p.reviews
                        .iter()
                        .filter_map(|r| d.reviews.get(r).cloned())
                        .map(|r| Some(ReviewObj(r)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}

pub struct ReviewsQuery;

#[Object(name = "Query")]
impl ReviewsQuery {
    #[graphql(entity)]
    async fn find_user_by_id(&self, id: ID) -> ReviewUser {
        ReviewUser(id.0)
    }
    #[graphql(entity)]
    async fn find_product_by_upc(&self, upc: String) -> ReviewProduct {
        ReviewProduct(upc)
    }
    #[graphql(entity)]
    async fn find_review_by_id(&self, ctx: &Context<'_>, id: ID) -> Option<ReviewObj> {
        data(ctx).reviews.get(id.as_str()).cloned().map(ReviewObj)
    }
}

pub struct Subgraphs {
    pub addr: std::net::SocketAddr,
    /// Subgraph name → answers 503 while set.
    pub down: Arc<BTreeMap<&'static str, AtomicBool>>,
    /// Requests served, per subgraph.
    pub requests: Arc<BTreeMap<&'static str, AtomicUsize>>,
    /// Milliseconds each answer of a subgraph is held back (0: none).
    pub delay_ms: Arc<BTreeMap<&'static str, AtomicU64>>,
}

pub type Exec = Arc<
    dyn Fn(async_graphql::Request) -> futures::future::BoxFuture<'static, async_graphql::Response>
        + Send
        + Sync,
>;

pub fn exec<Q, M, S>(schema: Schema<Q, M, S>) -> Exec
where
    Q: async_graphql::ObjectType + 'static,
    M: async_graphql::ObjectType + 'static,
    S: async_graphql::SubscriptionType + 'static,
{
    Arc::new(move |req| {
        let schema = schema.clone();
        Box::pin(async move { schema.execute(req).await })
    })
}

/// A federated subgraph of `query` alone (no mutations, no subscriptions).
pub fn federated<Q: async_graphql::ObjectType + 'static>(query: Q) -> Exec {
    exec(
        Schema::build(
            query,
            async_graphql::EmptyMutation,
            async_graphql::EmptySubscription,
        )
        .enable_federation()
        .finish(),
    )
}

/// Starts the four subgraphs on one loopback port: /accounts, /inventory, /products, /reviews.
pub async fn start() -> Subgraphs {
    start_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await
}

pub async fn start_on(at: std::net::SocketAddr) -> Subgraphs {
    let d: Data = Arc::new(BenchData::load());
    let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
    routes.insert(
        "accounts",
        exec(
            Schema::build(AccountsQuery, EmptyMutation, EmptySubscription)
                .enable_federation()
                .data(Arc::clone(&d))
                .finish(),
        ),
    );
    routes.insert(
        "products",
        exec(
            Schema::build(ProductsQuery, EmptyMutation, EmptySubscription)
                .enable_federation()
                .data(Arc::clone(&d))
                .finish(),
        ),
    );
    routes.insert(
        "inventory",
        exec(
            Schema::build(InventoryQuery, EmptyMutation, EmptySubscription)
                .enable_federation()
                .data(Arc::clone(&d))
                .finish(),
        ),
    );
    routes.insert(
        "reviews",
        exec(
            Schema::build(ReviewsQuery, EmptyMutation, EmptySubscription)
                .enable_federation()
                .data(Arc::clone(&d))
                .finish(),
        ),
    );
    serve(at, routes).await
}

/// Serves each subgraph of `routes` at `/<name>` on one port.
pub async fn serve(at: std::net::SocketAddr, routes: BTreeMap<&'static str, Exec>) -> Subgraphs {
    let routes = Arc::new(routes);
    let down: Arc<BTreeMap<&'static str, AtomicBool>> = Arc::new(
        routes
            .keys()
            .map(|k| (*k, AtomicBool::new(false)))
            .collect(),
    );
    let requests: Arc<BTreeMap<&'static str, AtomicUsize>> =
        Arc::new(routes.keys().map(|k| (*k, AtomicUsize::new(0))).collect());
    let delay_ms: Arc<BTreeMap<&'static str, AtomicU64>> =
        Arc::new(routes.keys().map(|k| (*k, AtomicU64::new(0))).collect());
    let listener = tokio::net::TcpListener::bind(at).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (down2, requests2, delay2) = (
        Arc::clone(&down),
        Arc::clone(&requests),
        Arc::clone(&delay_ms),
    );
    let documents: Arc<
        std::sync::Mutex<
            std::collections::HashMap<String, async_graphql::parser::types::ExecutableDocument>,
        >,
    > = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (routes, down, requests, delay, documents) = (
                Arc::clone(&routes),
                Arc::clone(&down2),
                Arc::clone(&requests2),
                Arc::clone(&delay2),
                Arc::clone(&documents),
            );
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (routes, down, requests, delay, documents) = (
                            Arc::clone(&routes),
                            Arc::clone(&down),
                            Arc::clone(&requests),
                            Arc::clone(&delay),
                            Arc::clone(&documents),
                        );
                        async move {
                            let name = req.uri().path().trim_start_matches('/').to_string();
                            let reply = |status: u16, body: Vec<u8>| {
                                let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = hyper::StatusCode::from_u16(status)
                                    .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                                r.headers_mut().insert(
                                    "content-type",
                                    hyper::header::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, std::convert::Infallible>(r)
                            };
                            let Some((key, exec)) = routes.get_key_value(name.as_str()) else {
                                return reply(404, b"{}".to_vec());
                            };
                            requests[key].fetch_add(1, Ordering::Relaxed);
                            if down[key].load(Ordering::Relaxed) {
                                return reply(503, b"{\"message\":\"down for the test\"}".to_vec());
                            }
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let Ok(mut request) =
                                serde_json::from_slice::<async_graphql::Request>(&body)
                            else {
                                return reply(400, b"{}".to_vec());
                            };
                            // Parsed documents are reused, as Apollo Server's document
                            // cache does; a gateway sends the same few texts over and over.
                            let cached = documents
                                .lock()
                                .ok()
                                .and_then(|d| d.get(&request.query).cloned());
                            match cached {
                                Some(document) => request.set_parsed_query(document),
                                None => {
                                    if let Ok(document) = request.parsed_query().cloned() {
                                        if let Ok(mut d) = documents.lock() {
                                            if d.len() >= 1024 {
                                                d.clear();
                                            }
                                            d.insert(request.query.clone(), document);
                                        }
                                    }
                                }
                            }
                            let hold = delay[key].load(Ordering::Relaxed);
                            if hold > 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(hold)).await;
                            }
                            let response = exec(request).await;
                            reply(200, serde_json::to_vec(&response).unwrap_or_default())
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Subgraphs {
        addr,
        down,
        requests,
        delay_ms,
    }
}

/// A gateway config pointing every subgraph at `addr`.
pub fn config_for(addr: std::net::SocketAddr, extra: &str) -> String {
    let mut text = String::from("subgraphs:\n");
    for name in ["accounts", "inventory", "products", "reviews"] {
        text.push_str(&format!(
            "  {name}: {{url: \"http://{addr}/{name}\", timeout: 5s}}\n"
        ));
    }
    text.push_str(extra);
    text
}

/// Two subgraphs over an interface and a union: `search` owns `Media`
/// (interface), `SearchResult` (union), and `Book`/`Movie` with their titles;
/// `ratings` adds `rating` to both entity types.
pub mod features;

pub mod media {
    use async_graphql::{
        EmptyMutation, EmptySubscription, Interface, Object, Schema, SimpleObject, Union, ID,
    };

    #[derive(SimpleObject, Clone)]
    pub struct Book {
        id: ID,
        title: String,
        pages: i32,
    }

    #[derive(SimpleObject, Clone)]
    pub struct Movie {
        id: ID,
        title: String,
        minutes: i32,
    }

    #[derive(Interface, Clone)]
    #[graphql(field(name = "id", ty = "&ID"), field(name = "title", ty = "&String"))]
    pub enum Media {
        Book(Book),
        Movie(Movie),
    }

    #[derive(Union, Clone)]
    pub enum SearchResult {
        Book(Book),
        Movie(Movie),
    }

    fn books() -> Vec<Book> {
        vec![
            Book {
                id: "1".into(),
                title: "Dune".into(),
                pages: 412,
            },
            Book {
                id: "2".into(),
                title: "Emma".into(),
                pages: 300,
            },
        ]
    }

    fn movie() -> Movie {
        Movie {
            id: "3".into(),
            title: "Alien".into(),
            minutes: 117,
        }
    }

    pub struct SearchQuery;

    #[Object(name = "Query")]
    impl SearchQuery {
        async fn search(&self, _text: String) -> Vec<SearchResult> {
            let b = books();
            vec![
                SearchResult::Book(b[0].clone()),
                SearchResult::Movie(movie()),
                SearchResult::Book(b[1].clone()),
            ]
        }
        async fn media(&self) -> Vec<Media> {
            let b = books();
            vec![
                Media::Book(b[0].clone()),
                Media::Movie(movie()),
                Media::Book(b[1].clone()),
            ]
        }
        #[graphql(entity)]
        async fn book_by_id(&self, id: ID) -> Option<Book> {
            books().into_iter().find(|b| b.id == id)
        }
        #[graphql(entity)]
        async fn movie_by_id(&self, id: ID) -> Option<Movie> {
            Some(movie()).filter(|m| m.id == id)
        }
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Book")]
    pub struct BookRating {
        id: ID,
        rating: Option<i32>,
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Movie")]
    pub struct MovieRating {
        id: ID,
        rating: Option<i32>,
    }

    pub struct RatingsQuery;

    #[Object(name = "Query")]
    impl RatingsQuery {
        #[graphql(entity)]
        async fn book(&self, id: ID) -> BookRating {
            let rating = (id.as_str() == "1").then_some(5);
            BookRating { id, rating }
        }
        #[graphql(entity)]
        async fn movie(&self, id: ID) -> MovieRating {
            let rating = (id.as_str() == "3").then_some(4);
            MovieRating { id, rating }
        }
    }

    pub async fn start() -> super::Subgraphs {
        let mut routes: std::collections::BTreeMap<&'static str, super::Exec> =
            std::collections::BTreeMap::new();
        routes.insert(
            "search",
            super::exec(
                Schema::build(SearchQuery, EmptyMutation, EmptySubscription)
                    .enable_federation()
                    .finish(),
            ),
        );
        routes.insert(
            "ratings",
            super::exec(
                Schema::build(RatingsQuery, EmptyMutation, EmptySubscription)
                    .enable_federation()
                    .finish(),
            ),
        );
        super::serve(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), routes).await
    }
}

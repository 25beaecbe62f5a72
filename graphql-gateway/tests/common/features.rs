//! Subgraphs for the Federation feature tests, one set per supergraph of
//! tests/data/*-supergraph.graphql, each written with async-graphql.

use super::{exec, federated, serve, Exec, Subgraphs};
use async_graphql::{Context, EmptyMutation, EmptySubscription, Object, Schema, SimpleObject, ID};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `mutations-supergraph.graphql`: `ledger` keeps a balance, `audit` keeps
/// notes. Both write every mutation they run to one shared journal, and
/// `note` answers with the journal as it was, so the test sees the order in
/// which the gateway ran the fields.
pub mod mutations {
    use super::*;

    #[derive(Default)]
    pub struct Journal {
        pub balance: i32,
        pub entries: Vec<String>,
    }

    pub type Shared = Arc<Mutex<Journal>>;

    fn journal<'a>(ctx: &Context<'a>) -> &'a Shared {
        ctx.data_unchecked::<Shared>()
    }

    pub struct LedgerQuery;

    #[Object(name = "Query")]
    impl LedgerQuery {
        async fn balance(&self, ctx: &Context<'_>) -> i32 {
            journal(ctx).lock().map(|j| j.balance).unwrap_or_default()
        }
    }

    pub struct LedgerMutation;

    #[Object(name = "Mutation")]
    impl LedgerMutation {
        async fn deposit(&self, ctx: &Context<'_>, amount: i32) -> i32 {
            let mut j = journal(ctx).lock().expect("journal");
            j.balance += amount;
            j.entries.push(format!("deposit {amount}"));
            j.balance
        }
        async fn withdraw(&self, ctx: &Context<'_>, amount: i32) -> i32 {
            let mut j = journal(ctx).lock().expect("journal");
            j.balance -= amount;
            j.entries.push(format!("withdraw {amount}"));
            j.balance
        }
    }

    pub struct AuditQuery;

    #[Object(name = "Query")]
    impl AuditQuery {
        async fn notes(&self, ctx: &Context<'_>) -> Vec<String> {
            journal(ctx)
                .lock()
                .map(|j| j.entries.clone())
                .unwrap_or_default()
        }
    }

    pub struct AuditMutation;

    #[Object(name = "Mutation")]
    impl AuditMutation {
        /// Records `text` and answers with what the journal held before it.
        async fn note(&self, ctx: &Context<'_>, text: String) -> String {
            let mut j = journal(ctx).lock().expect("journal");
            let before = j.entries.join(", ");
            j.entries.push(format!("note {text}"));
            format!("{text} after [{before}]")
        }
    }

    pub async fn start() -> (Subgraphs, Shared) {
        let shared: Shared = Arc::default();
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert(
            "ledger",
            exec(
                Schema::build(LedgerQuery, LedgerMutation, EmptySubscription)
                    .enable_federation()
                    .data(Arc::clone(&shared))
                    .finish(),
            ),
        );
        routes.insert(
            "audit",
            exec(
                Schema::build(AuditQuery, AuditMutation, EmptySubscription)
                    .enable_federation()
                    .data(Arc::clone(&shared))
                    .finish(),
            ),
        );
        (serve(loopback(), routes).await, shared)
    }
}

/// `fragments-supergraph.graphql`: `library` owns the interface `Item`
/// (`Book`, `Map`), each with an `author`; `people` owns `Person`'s name and
/// birth year.
pub mod fragments {
    use super::*;
    use async_graphql::Interface;

    #[derive(SimpleObject, Clone)]
    #[graphql(name = "Person")]
    pub struct PersonRef {
        id: ID,
    }

    #[derive(SimpleObject, Clone)]
    pub struct Book {
        id: ID,
        title: String,
        author: Option<PersonRef>,
    }

    #[derive(SimpleObject, Clone)]
    pub struct Map {
        id: ID,
        scale: i32,
        author: Option<PersonRef>,
    }

    #[derive(Interface, Clone)]
    #[graphql(
        field(name = "id", ty = "&ID"),
        field(name = "author", ty = "&Option<PersonRef>")
    )]
    pub enum Item {
        Book(Book),
        Map(Map),
    }

    pub struct LibraryQuery;

    #[Object(name = "Query")]
    impl LibraryQuery {
        async fn items(&self) -> Vec<Item> {
            vec![
                Item::Book(Book {
                    id: "b1".into(),
                    title: "Dune".into(),
                    author: Some(PersonRef { id: "p1".into() }),
                }),
                Item::Map(Map {
                    id: "m1".into(),
                    scale: 5,
                    author: Some(PersonRef { id: "p2".into() }),
                }),
            ]
        }
    }

    #[derive(SimpleObject)]
    pub struct Person {
        id: ID,
        name: String,
        born: Option<i32>,
    }

    pub struct PeopleQuery;

    #[Object(name = "Query")]
    impl PeopleQuery {
        #[graphql(entity)]
        async fn person(&self, id: ID) -> Option<Person> {
            match id.as_str() {
                "p1" => Some(Person {
                    id,
                    name: "Frank".into(),
                    born: Some(1920),
                }),
                "p2" => Some(Person {
                    id,
                    name: "Ann".into(),
                    born: None,
                }),
                _ => None,
            }
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert(
            "library",
            exec(
                Schema::build(LibraryQuery, EmptyMutation, EmptySubscription)
                    .enable_federation()
                    .register_output_type::<Item>()
                    .finish(),
            ),
        );
        routes.insert("people", federated(PeopleQuery));
        serve(loopback(), routes).await
    }
}

/// `inaccessible-supergraph.graphql`: `shop` owns products with a `Color`
/// enum whose value `SECRET` is `@inaccessible` (and returns it for one
/// product), an inaccessible field `cost` and an inaccessible type
/// `Internal`; `stock` adds `stock(warehouse:, internal:)`, whose argument
/// `internal` is inaccessible.
pub mod inaccessible {
    use super::*;

    #[derive(async_graphql::Enum, Copy, Clone, Eq, PartialEq)]
    pub enum Color {
        Red,
        Green,
        Secret,
    }

    #[derive(SimpleObject, Clone)]
    pub struct Product {
        id: ID,
        name: String,
        color: Option<Color>,
        colors: Option<Vec<Color>>,
        cost: Option<i32>,
    }

    #[derive(SimpleObject)]
    pub struct Internal {
        x: i32,
    }

    fn products() -> Vec<Product> {
        vec![
            Product {
                id: "p1".into(),
                name: "Lamp".into(),
                color: Some(Color::Red),
                colors: Some(vec![Color::Red, Color::Green]),
                cost: Some(7),
            },
            Product {
                id: "p2".into(),
                name: "Safe".into(),
                color: Some(Color::Secret),
                colors: Some(vec![Color::Green, Color::Secret]),
                cost: Some(90),
            },
        ]
    }

    pub struct ShopQuery;

    #[Object(name = "Query")]
    impl ShopQuery {
        async fn products(&self, color: Option<Color>) -> Vec<Product> {
            products()
                .into_iter()
                .filter(|p| color.is_none() || p.color == color)
                .collect()
        }
        async fn internal(&self) -> Internal {
            Internal { x: 1 }
        }
        #[graphql(entity)]
        async fn product(&self, id: ID) -> Option<Product> {
            products().into_iter().find(|p| p.id == id)
        }
    }

    pub struct StockProduct {
        id: ID,
    }

    #[Object(name = "Product")]
    impl StockProduct {
        async fn id(&self) -> &ID {
            &self.id
        }
        async fn stock(&self, warehouse: Option<String>, internal: Option<bool>) -> Option<i32> {
            let base = if self.id.as_str() == "p1" { 3 } else { 0 };
            Some(base + i32::from(warehouse.is_none()) + i32::from(internal == Some(true)) * 100)
        }
    }

    pub struct StockQuery;

    #[Object(name = "Query")]
    impl StockQuery {
        #[graphql(entity)]
        async fn product(&self, id: ID) -> StockProduct {
            StockProduct { id }
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("shop", federated(ShopQuery));
        routes.insert("stock", federated(StockQuery));
        serve(loopback(), routes).await
    }
}

/// `shareable-supergraph.graphql`: three subgraphs over `Product`.
/// * `a`: `products` and `product(id:)` (shareable), keyed by `id`, with
///   `name` and `dims { width }`;
/// * `b`: keys `id` and `sku`; `product(id:)`, `name`, `price`, and
///   `dims { width depth }` (`Dimensions` is a value type: no key);
/// * `c`: keyed by `sku` only, with `reviews`.
pub mod shareable {
    use super::*;

    struct Row {
        id: &'static str,
        sku: &'static str,
        name: &'static str,
        price: i32,
        width: i32,
        depth: i32,
        reviews: &'static [&'static str],
    }

    const ROWS: [Row; 2] = [
        Row {
            id: "1",
            sku: "sku-1",
            name: "Chair",
            price: 40,
            width: 50,
            depth: 55,
            reviews: &["sturdy", "tall"],
        },
        Row {
            id: "2",
            sku: "sku-2",
            name: "Desk",
            price: 120,
            width: 140,
            depth: 70,
            reviews: &[],
        },
    ];

    fn by_id(id: &str) -> Option<&'static Row> {
        ROWS.iter().find(|r| r.id == id)
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Dimensions")]
    pub struct DimensionsA {
        width: i32,
    }

    pub struct ProductA(&'static Row);

    #[Object(name = "Product")]
    impl ProductA {
        async fn id(&self) -> ID {
            ID(self.0.id.into())
        }
        async fn name(&self) -> &str {
            self.0.name
        }
        async fn dims(&self) -> DimensionsA {
            DimensionsA {
                width: self.0.width,
            }
        }
    }

    pub struct QueryA;

    #[Object(name = "Query")]
    impl QueryA {
        async fn products(&self) -> Vec<ProductA> {
            ROWS.iter().map(ProductA).collect()
        }
        async fn product(&self, id: ID) -> Option<ProductA> {
            by_id(&id).map(ProductA)
        }
        #[graphql(entity)]
        async fn product_by_id(&self, id: ID) -> Option<ProductA> {
            by_id(&id).map(ProductA)
        }
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Dimensions")]
    pub struct DimensionsB {
        width: i32,
        depth: Option<i32>,
    }

    pub struct ProductB(&'static Row);

    #[Object(name = "Product")]
    impl ProductB {
        async fn id(&self) -> ID {
            ID(self.0.id.into())
        }
        async fn sku(&self) -> &str {
            self.0.sku
        }
        async fn name(&self) -> &str {
            self.0.name
        }
        async fn price(&self) -> Option<i32> {
            Some(self.0.price)
        }
        async fn dims(&self) -> DimensionsB {
            DimensionsB {
                width: self.0.width,
                depth: Some(self.0.depth),
            }
        }
    }

    pub struct QueryB;

    #[Object(name = "Query")]
    impl QueryB {
        async fn product(&self, id: ID) -> Option<ProductB> {
            by_id(&id).map(ProductB)
        }
        #[graphql(entity)]
        async fn product_by_id(&self, id: ID) -> Option<ProductB> {
            by_id(&id).map(ProductB)
        }
        #[graphql(entity)]
        async fn product_by_sku(&self, sku: String) -> Option<ProductB> {
            ROWS.iter().find(|r| r.sku == sku).map(ProductB)
        }
    }

    pub struct ProductC(&'static Row);

    #[Object(name = "Product")]
    impl ProductC {
        async fn sku(&self) -> &str {
            self.0.sku
        }
        async fn reviews(&self) -> Vec<&str> {
            self.0.reviews.to_vec()
        }
    }

    pub struct QueryC;

    #[Object(name = "Query")]
    impl QueryC {
        #[graphql(entity)]
        async fn product_by_sku(&self, sku: String) -> Option<ProductC> {
            ROWS.iter().find(|r| r.sku == sku).map(ProductC)
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("a", federated(QueryA));
        routes.insert("b", federated(QueryB));
        routes.insert("c", federated(QueryC));
        serve(loopback(), routes).await
    }
}

/// `requires-supergraph.graphql`: a chain of `@requires`. `catalog` owns
/// `size`; `physics` computes `weight` from `size` (`@requires(fields:
/// "size")`); `shipping` computes `cost(zone:)` from `weight`.
pub mod requires {
    use super::*;
    use async_graphql::Json;

    pub struct CatalogProduct {
        id: &'static str,
        size: Option<i32>,
    }

    #[Object(name = "Product")]
    impl CatalogProduct {
        async fn id(&self) -> ID {
            ID(self.id.into())
        }
        async fn size(&self) -> Option<i32> {
            self.size
        }
        /// Another value per currency, so a value sent under the wrong
        /// arguments shows.
        async fn price(&self, currency: String) -> Option<i32> {
            let per_size = match currency.as_str() {
                "USD" => 10,
                "EUR" => 9,
                _ => 8,
            };
            self.size.map(|s| s * per_size)
        }
    }

    const SIZES: [(&str, Option<i32>); 2] = [("1", Some(5)), ("2", None)];

    /// Known by its country here only; shipping knows which product it made.
    pub struct CatalogMaker(ID);

    #[Object(name = "Maker")]
    impl CatalogMaker {
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn country(&self) -> &str {
            if self.0.as_str() == "m1" {
                "FR"
            } else {
                "JP"
            }
        }
    }

    pub struct CatalogQuery;

    #[Object(name = "Query")]
    impl CatalogQuery {
        #[graphql(entity)]
        async fn maker(&self, id: ID) -> CatalogMaker {
            CatalogMaker(id)
        }
        async fn products(&self) -> Vec<CatalogProduct> {
            SIZES
                .iter()
                .map(|(id, size)| CatalogProduct { id, size: *size })
                .collect()
        }
        #[graphql(entity)]
        async fn product(&self, id: ID) -> Option<CatalogProduct> {
            SIZES
                .iter()
                .find(|(i, _)| *i == id.as_str())
                .map(|(id, size)| CatalogProduct { id, size: *size })
        }
    }

    pub struct PhysicsProduct {
        id: ID,
        size: Option<i32>,
    }

    #[Object(name = "Product")]
    impl PhysicsProduct {
        async fn id(&self) -> &ID {
            &self.id
        }
        #[graphql(external)]
        async fn size(&self) -> Option<i32> {
            self.size
        }
        #[graphql(requires = "size")]
        async fn weight(&self) -> Option<i32> {
            self.size.map(|s| s * 2)
        }
    }

    pub struct PhysicsQuery;

    #[Object(name = "Query")]
    impl PhysicsQuery {
        /// A root field of the subgraph that requires `size` for `weight`:
        /// it does not know the size here (it is another subgraph's), so
        /// `weight` asked below it must go through `_entities` with it.
        async fn heaviest(&self) -> PhysicsProduct {
            PhysicsProduct {
                id: ID("1".into()),
                size: None,
            }
        }
        /// `size` must be in the representation: it is a required field.
        #[graphql(entity)]
        async fn product(&self, #[graphql(key)] id: ID, size: Json<Option<i32>>) -> PhysicsProduct {
            PhysicsProduct { id, size: size.0 }
        }
    }

    pub struct ShippingProduct {
        id: ID,
        weight: Option<i32>,
        /// `price(currency: "USD")` or `price(currency: "EUR")`, whichever
        /// the representation carried.
        price: Option<i32>,
        /// `maker { country }`, when the representation carried it.
        maker_country: Option<String>,
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Maker")]
    pub struct ShippingMaker {
        id: ID,
    }

    #[Object(name = "Product")]
    impl ShippingProduct {
        async fn id(&self) -> &ID {
            &self.id
        }
        #[graphql(external)]
        async fn weight(&self) -> Option<i32> {
            self.weight
        }
        #[graphql(requires = "weight")]
        async fn cost(&self, zone: String) -> Option<i32> {
            let factor = if zone == "EU" { 1 } else { 3 };
            self.weight.map(|w| w * factor)
        }
        /// Requires `price(currency: "USD") weight`.
        async fn estimate(&self) -> Option<i32> {
            Some(self.price? * self.weight?)
        }
        /// Requires `price(currency: "EUR")`: the same field with other
        /// arguments, so it cannot share a representation with `estimate`.
        async fn estimate_eur(&self) -> Option<i32> {
            self.price.map(|p| p * 2)
        }
        /// Answered here: the maker is shipping's own field.
        async fn maker(&self) -> ShippingMaker {
            ShippingMaker {
                id: ID(if self.id.as_str() == "1" { "m1" } else { "m2" }.into()),
            }
        }
        /// Requires `maker { country }`: `maker` is this subgraph's own field,
        /// `country` only catalog's, so the gateway asks this subgraph for the
        /// maker first, catalog for its country, then this subgraph again.
        async fn duty(&self) -> Option<i32> {
            self.maker_country
                .as_deref()
                .map(|c| if c == "FR" { 5 } else { 7 })
        }
    }

    pub struct ShippingQuery;

    #[Object(name = "Query")]
    impl ShippingQuery {
        #[graphql(entity)]
        async fn product(
            &self,
            #[graphql(key)] id: ID,
            weight: Option<Json<Option<i32>>>,
            price: Option<Json<Option<i32>>>,
            maker: Option<Json<serde_json::Value>>,
        ) -> ShippingProduct {
            ShippingProduct {
                id,
                weight: weight.and_then(|w| w.0),
                price: price.and_then(|p| p.0),
                maker_country: maker.and_then(|m| m.0["country"].as_str().map(str::to_string)),
            }
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("catalog", federated(CatalogQuery));
        routes.insert("physics", federated(PhysicsQuery));
        routes.insert("shipping", federated(ShippingQuery));
        serve(loopback(), routes).await
    }
}

/// `override-supergraph.graphql`: `billing` takes `price` and `code` over
/// from `pricing`, and `tax` progressively (label `percent(25)`). Both
/// subgraphs still answer every field, with different values, so the
/// response shows which one the gateway asked.
pub mod overrides {
    use super::*;

    pub struct PricingProduct(&'static str);

    #[Object(name = "Product")]
    impl PricingProduct {
        async fn id(&self) -> ID {
            ID(self.0.into())
        }
        async fn name(&self) -> String {
            format!("product {}", self.0)
        }
        async fn price(&self) -> i32 {
            -1
        }
        async fn tax(&self) -> i32 {
            1
        }
        async fn code(&self) -> &str {
            "from pricing"
        }
    }

    pub struct PricingQuery;

    #[Object(name = "Query")]
    impl PricingQuery {
        async fn products(&self) -> Vec<PricingProduct> {
            vec![PricingProduct("1"), PricingProduct("2")]
        }
        #[graphql(entity)]
        async fn product(&self, id: ID) -> PricingProduct {
            PricingProduct(if id.as_str() == "1" { "1" } else { "2" })
        }
    }

    pub struct BillingProduct(ID);

    #[Object(name = "Product")]
    impl BillingProduct {
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn price(&self) -> i32 {
            if self.0.as_str() == "1" {
                10
            } else {
                20
            }
        }
        async fn tax(&self) -> i32 {
            2
        }
        async fn code(&self) -> &str {
            "from billing"
        }
    }

    pub struct BillingQuery;

    #[Object(name = "Query")]
    impl BillingQuery {
        #[graphql(entity)]
        async fn product(&self, id: ID) -> BillingProduct {
            BillingProduct(id)
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("pricing", federated(PricingQuery));
        routes.insert("billing", federated(BillingQuery));
        serve(loopback(), routes).await
    }
}

/// `fieldsets-supergraph.graphql`: `vet` computes `advice` from
/// `@requires(fields: "pet { ... on Dog { barks } ... on Cat { meows } }")`;
/// `pets` owns owners and their pets (an interface).
pub mod fieldsets {
    use super::*;
    use async_graphql::{Interface, Json};

    #[derive(SimpleObject, Clone)]
    pub struct Dog {
        name: String,
        barks: bool,
    }

    #[derive(SimpleObject, Clone)]
    pub struct Cat {
        name: String,
        meows: i32,
    }

    #[derive(Interface, Clone)]
    #[graphql(field(name = "name", ty = "&String"))]
    pub enum Pet {
        Dog(Dog),
        Cat(Cat),
    }

    #[derive(SimpleObject, Clone)]
    #[graphql(name = "Owner")]
    pub struct PetsOwner {
        id: ID,
        pet: Option<Pet>,
    }

    fn owners() -> Vec<PetsOwner> {
        vec![
            PetsOwner {
                id: "o1".into(),
                pet: Some(Pet::Dog(Dog {
                    name: "Rex".into(),
                    barks: true,
                })),
            },
            PetsOwner {
                id: "o2".into(),
                pet: Some(Pet::Cat(Cat {
                    name: "Tom".into(),
                    meows: 3,
                })),
            },
            PetsOwner {
                id: "o3".into(),
                pet: None,
            },
        ]
    }

    pub struct PetsQuery;

    #[Object(name = "Query")]
    impl PetsQuery {
        async fn owners(&self) -> Vec<PetsOwner> {
            owners()
        }
        #[graphql(entity)]
        async fn owner(&self, id: ID) -> Option<PetsOwner> {
            owners().into_iter().find(|o| o.id == id)
        }
    }

    pub struct VetOwner {
        id: ID,
        pet: serde_json::Value,
    }

    #[Object(name = "Owner")]
    impl VetOwner {
        async fn id(&self) -> &ID {
            &self.id
        }
        /// Says what the representation carried for the pet.
        #[graphql(requires = "pet { ... on Dog { barks } ... on Cat { meows } }")]
        async fn advice(&self) -> String {
            match (self.pet["__typename"].as_str(), &self.pet) {
                (Some("Dog"), p) => format!("walk the dog (barks: {})", p["barks"]),
                (Some("Cat"), p) => format!("feed the cat (meows: {})", p["meows"]),
                (_, p) => format!("no pet ({p})"),
            }
        }
    }

    pub struct VetQuery;

    #[Object(name = "Query")]
    impl VetQuery {
        #[graphql(entity)]
        async fn owner(&self, #[graphql(key)] id: ID, pet: Json<serde_json::Value>) -> VetOwner {
            VetOwner { id, pet: pet.0 }
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert(
            "pets",
            exec(
                Schema::build(PetsQuery, EmptyMutation, EmptySubscription)
                    .enable_federation()
                    .register_output_type::<Pet>()
                    .finish(),
            ),
        );
        routes.insert("vet", federated(VetQuery));
        serve(loopback(), routes).await
    }
}

/// `conditions-supergraph.graphql`: the union `SearchResult` has `Book` in
/// `search` and `Movie` in `films`; neither subgraph defines the other's type.
pub mod conditions {
    use super::*;
    use async_graphql::Union;

    #[derive(SimpleObject, Clone)]
    pub struct Book {
        title: String,
        pages: i32,
    }

    #[derive(Union)]
    #[graphql(name = "SearchResult")]
    pub enum BookResult {
        Book(Book),
    }

    pub struct SearchQuery;

    #[Object(name = "Query")]
    impl SearchQuery {
        async fn search(&self) -> Vec<BookResult> {
            vec![BookResult::Book(Book {
                title: "Dune".into(),
                pages: 412,
            })]
        }
    }

    #[derive(SimpleObject, Clone)]
    pub struct Movie {
        title: String,
        minutes: i32,
    }

    #[derive(Union)]
    #[graphql(name = "SearchResult")]
    pub enum MovieResult {
        Movie(Movie),
    }

    pub struct FilmsQuery;

    #[Object(name = "Query")]
    impl FilmsQuery {
        async fn trending(&self) -> Vec<MovieResult> {
            vec![MovieResult::Movie(Movie {
                title: "Alien".into(),
                minutes: 117,
            })]
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("search", federated(SearchQuery));
        routes.insert("films", federated(FilmsQuery));
        serve(loopback(), routes).await
    }
}

/// `interface-object-supergraph.graphql`: `media` owns the entity interface
/// `Media` (`@key(fields: "id")`) and its implementations `Book` and
/// `Movie`; `reviews` knows `Media` only as an object (`@interfaceObject`)
/// and adds `reviews` to every implementation, and has its own root field
/// `topMedia` returning such objects.
pub mod interface_object {
    use super::*;
    use async_graphql::Interface;

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

    fn library() -> Vec<Media> {
        vec![
            Media::Book(Book {
                id: "b1".into(),
                title: "Dune".into(),
                pages: 412,
            }),
            Media::Movie(Movie {
                id: "m1".into(),
                title: "Alien".into(),
                minutes: 117,
            }),
        ]
    }

    pub struct MediaQuery;

    #[Object(name = "Query")]
    impl MediaQuery {
        async fn library(&self) -> Vec<Media> {
            library()
        }
        /// Entities of the interface: `{"__typename": "Media", "id": …}`.
        #[graphql(entity)]
        async fn media(&self, id: ID) -> Option<Media> {
            library().into_iter().find(|m| match m {
                Media::Book(b) => b.id == id,
                Media::Movie(m) => m.id == id,
            })
        }
        // The implementations of an entity interface are entities too (the
        // Federation spec asks them to have its key); this also puts them in
        // `_Entity`, so `... on Media` can be spread there.
        #[graphql(entity)]
        async fn book(&self, id: ID) -> Option<Book> {
            library().into_iter().find_map(|m| match m {
                Media::Book(b) if b.id == id => Some(b),
                _ => None,
            })
        }
        #[graphql(entity)]
        async fn movie(&self, id: ID) -> Option<Movie> {
            library().into_iter().find_map(|m| match m {
                Media::Movie(m) if m.id == id => Some(m),
                _ => None,
            })
        }
    }

    /// `Media` as `reviews` knows it: an object.
    pub struct MediaObject(ID);

    #[Object(name = "Media")]
    impl MediaObject {
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn reviews(&self) -> Vec<&str> {
            match self.0.as_str() {
                "b1" => vec!["great"],
                "m1" => vec!["scary", "classic"],
                _ => vec![],
            }
        }
    }

    pub struct ReviewsQuery;

    #[Object(name = "Query")]
    impl ReviewsQuery {
        async fn top_media(&self) -> Vec<MediaObject> {
            vec![MediaObject("m1".into()), MediaObject("b1".into())]
        }
        #[graphql(entity)]
        async fn media(&self, id: ID) -> MediaObject {
            MediaObject(id)
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("media", federated(MediaQuery));
        routes.insert("reviews", federated(ReviewsQuery));
        serve(loopback(), routes).await
    }
}

/// `implementations-supergraph.graphql`: `catalog` returns the interface
/// `Product` (`Book`, `Magazine`); `stock` resolves `inStock`, a field of the
/// interface, for each implementation by its key, and has no key for the
/// interface itself. `Magazine.title` is overridden by `stock`, so catalog's
/// old answer ("Wired") must not be used.
pub mod implementations {
    use super::*;
    use async_graphql::Interface;

    #[derive(SimpleObject, Clone)]
    pub struct Book {
        id: ID,
        title: String,
        pages: i32,
    }

    #[derive(SimpleObject, Clone)]
    pub struct Magazine {
        id: ID,
        title: String,
        issue: i32,
    }

    #[derive(Interface, Clone)]
    #[graphql(field(name = "id", ty = "&ID"), field(name = "title", ty = "&String"))]
    pub enum Product {
        Book(Book),
        Magazine(Magazine),
    }

    /// The catalog's one book and one magazine.
    fn book() -> Book {
        Book {
            id: "b1".into(),
            title: "Dune".into(),
            pages: 412,
        }
    }

    fn magazine() -> Magazine {
        Magazine {
            id: "m1".into(),
            title: "Wired".into(),
            issue: 7,
        }
    }

    pub struct CatalogQuery;

    #[Object(name = "Query")]
    impl CatalogQuery {
        async fn products(&self) -> Vec<Product> {
            vec![Product::Book(book()), Product::Magazine(magazine())]
        }
        #[graphql(entity)]
        async fn book_by_id(&self, id: ID) -> Option<Book> {
            Some(book()).filter(|b| b.id == id)
        }
        #[graphql(entity)]
        async fn magazine_by_id(&self, id: ID) -> Option<Magazine> {
            Some(magazine()).filter(|m| m.id == id)
        }
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Book")]
    pub struct BookStock {
        id: ID,
        in_stock: bool,
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Magazine")]
    pub struct MagazineStock {
        id: ID,
        in_stock: bool,
        title: String,
    }

    pub struct StockQuery;

    #[Object(name = "Query")]
    impl StockQuery {
        #[graphql(entity)]
        async fn book_by_id(&self, id: ID) -> BookStock {
            BookStock {
                in_stock: id.as_str() == "b1",
                id,
            }
        }
        #[graphql(entity)]
        async fn magazine_by_id(&self, id: ID) -> MagazineStock {
            MagazineStock {
                in_stock: id.as_str() == "b1",
                id,
                title: "Wired (from stock)".into(),
            }
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("catalog", federated(CatalogQuery));
        routes.insert("stock", federated(StockQuery));
        serve(loopback(), routes).await
    }
}

/// `type-mismatch-supergraph.graphql`: `accounts` owns the union `Account`
/// of `User` (`id: ID!`) and `Bot` (`id: ID`), each with `friends`;
/// `directory` lists users and declares `User.id` as `ID`, so the
/// supergraph's `User.id` is `ID`. Selecting `id` on both members is valid
/// against the supergraph and refused by `accounts` as written (graphql-js:
/// "fields conflict"). Every query `accounts` is sent is kept in `queries`.
pub mod type_mismatch {
    use super::*;
    use async_graphql::Union;

    const PEOPLE: [(&str, &str); 2] = [("u1", "Ada"), ("u2", "Grace")];

    pub struct User(&'static str, &'static str);

    #[Object]
    impl User {
        async fn id(&self) -> ID {
            ID(self.0.into())
        }
        async fn name(&self) -> &str {
            self.1
        }
        async fn friends(&self) -> Vec<Account> {
            everyone()
                .into_iter()
                .filter(|a| !matches!(a, Account::User(u) if u.0 == self.0))
                .collect()
        }
    }

    pub struct Bot;

    #[Object]
    impl Bot {
        async fn id(&self) -> Option<ID> {
            Some(ID("b1".into()))
        }
        async fn name(&self) -> Option<&str> {
            Some("helper")
        }
        async fn friends(&self) -> Vec<Account> {
            PEOPLE
                .iter()
                .take(1)
                .map(|(id, name)| Account::User(User(id, name)))
                .collect()
        }
    }

    #[derive(Union)]
    pub enum Account {
        User(User),
        Bot(Bot),
    }

    fn everyone() -> Vec<Account> {
        let mut all: Vec<Account> = PEOPLE
            .iter()
            .map(|(id, name)| Account::User(User(id, name)))
            .collect();
        all.push(Account::Bot(Bot));
        all
    }

    pub struct AccountsQuery;

    #[Object(name = "Query")]
    impl AccountsQuery {
        async fn accounts(&self) -> Vec<Account> {
            everyone()
        }
        #[graphql(entity)]
        async fn user_by_id(&self, id: ID) -> Option<User> {
            PEOPLE
                .iter()
                .find(|(i, _)| *i == id.as_str())
                .map(|(id, name)| User(id, name))
        }
    }

    #[derive(SimpleObject)]
    #[graphql(name = "User")]
    pub struct ListedUser {
        id: Option<ID>,
    }

    pub struct DirectoryQuery;

    #[Object(name = "Query")]
    impl DirectoryQuery {
        async fn users(&self) -> Vec<ListedUser> {
            PEOPLE
                .iter()
                .map(|(id, _)| ListedUser {
                    id: Some(ID((*id).into())),
                })
                .collect()
        }
    }

    pub async fn start() -> (Subgraphs, Arc<Mutex<Vec<String>>>) {
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let accounts = federated(AccountsQuery);
        let kept = queries.clone();
        let recording: Exec = Arc::new(move |req: async_graphql::Request| {
            if let Ok(mut q) = kept.lock() {
                q.push(req.query.clone());
            }
            accounts(req)
        });
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("accounts", recording);
        routes.insert("directory", federated(DirectoryQuery));
        (serve(loopback(), routes).await, queries)
    }
}

/// `shared-root-supergraph.graphql`: `catalog` and `pricing` both resolve
/// `product` and `products` (`@shareable`) and return the same products
/// in the same order; `Product` has no key, `catalog` alone knows its
/// `category` and `pricing` alone its `price`.
pub mod shared_root {
    use super::*;

    const ROWS: [(&str, &str, i32); 2] = [("p1", "Chairs", 40), ("p2", "Desks", 120)];

    #[derive(SimpleObject)]
    pub struct Category {
        id: ID,
        name: String,
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Product")]
    pub struct CatalogProduct {
        id: ID,
        category: Category,
    }

    fn catalog_product(row: &(&str, &str, i32)) -> CatalogProduct {
        CatalogProduct {
            id: ID(row.0.into()),
            category: Category {
                id: ID(format!("c-{}", row.0)),
                name: row.1.into(),
            },
        }
    }

    pub struct CatalogQuery;

    #[Object(name = "Query")]
    impl CatalogQuery {
        async fn product(&self) -> CatalogProduct {
            catalog_product(&ROWS[0])
        }
        async fn products(&self) -> Vec<CatalogProduct> {
            ROWS.iter().map(catalog_product).collect()
        }
    }

    #[derive(SimpleObject)]
    pub struct Price {
        amount: i32,
        currency: String,
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Product")]
    pub struct PricingProduct {
        id: ID,
        price: Price,
    }

    fn pricing_product(row: &(&str, &str, i32)) -> PricingProduct {
        PricingProduct {
            id: ID(row.0.into()),
            price: Price {
                amount: row.2,
                currency: "EUR".into(),
            },
        }
    }

    pub struct PricingQuery;

    #[Object(name = "Query")]
    impl PricingQuery {
        async fn product(&self) -> PricingProduct {
            pricing_product(&ROWS[0])
        }
        async fn products(&self) -> Vec<PricingProduct> {
            ROWS.iter().map(pricing_product).collect()
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("catalog", federated(CatalogQuery));
        routes.insert("pricing", federated(PricingQuery));
        serve(loopback(), routes).await
    }
}

/// `implements-per-graph-supergraph.graphql`: in `shop`, `Kettle`
/// implements `Node` and `Lamp` does not; in `warranty`, `Lamp` does and
/// adds `years`. `shop` lists the union `Item` (both) and `nodes` (Node:
/// kettles only).
pub mod implements_per_graph {
    use super::*;
    use async_graphql::{Interface, Union};

    #[derive(SimpleObject, Clone)]
    pub struct Kettle {
        id: ID,
        volume: Option<i32>,
    }

    #[derive(SimpleObject, Clone)]
    pub struct Lamp {
        id: ID,
    }

    #[derive(Interface, Clone)]
    #[graphql(field(name = "id", ty = "&ID"))]
    pub enum Node {
        Kettle(Kettle),
    }

    #[derive(Union)]
    pub enum Item {
        Kettle(Kettle),
        Lamp(Lamp),
    }

    fn kettle() -> Kettle {
        Kettle {
            id: "k1".into(),
            volume: Some(2),
        }
    }

    pub struct ShopQuery;

    #[Object(name = "Query")]
    impl ShopQuery {
        async fn items(&self) -> Option<Vec<Option<Item>>> {
            Some(vec![
                Some(Item::Kettle(kettle())),
                Some(Item::Lamp(Lamp { id: "l1".into() })),
            ])
        }
        async fn nodes(&self) -> Option<Vec<Option<Node>>> {
            Some(vec![Some(Node::Kettle(kettle()))])
        }
        #[graphql(entity)]
        async fn kettle_by_id(&self, id: ID) -> Option<Kettle> {
            (id.as_str() == "k1").then(kettle)
        }
        #[graphql(entity)]
        async fn lamp_by_id(&self, id: ID) -> Option<Lamp> {
            (id.as_str() == "l1").then_some(Lamp { id })
        }
    }

    #[derive(SimpleObject, Clone)]
    #[graphql(name = "Lamp")]
    pub struct WarrantyLamp {
        id: ID,
        years: Option<i32>,
    }

    #[derive(Interface, Clone)]
    #[graphql(name = "Node", field(name = "id", ty = "&ID"))]
    pub enum WarrantyNode {
        Lamp(WarrantyLamp),
    }

    pub struct WarrantyQuery;

    #[Object(name = "Query")]
    impl WarrantyQuery {
        /// Makes `Node` part of this subgraph's schema, as in the supergraph.
        async fn warranted(&self) -> Vec<WarrantyNode> {
            Vec::new()
        }
        #[graphql(entity)]
        async fn lamp_by_id(&self, id: ID) -> Option<WarrantyLamp> {
            (id.as_str() == "l1").then_some(WarrantyLamp { id, years: Some(2) })
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("shop", federated(ShopQuery));
        routes.insert("warranty", federated(WarrantyQuery));
        serve(loopback(), routes).await
    }
}

/// `hops-supergraph.graphql`: two hops before a field can be fetched.
/// * `catalog` returns products (`productFromCatalog`); `details` and `tags`
///   both resolve `Product.category` (`@shareable`), a value type whose
///   `details` only `details` has and whose `id` only `tags` has (both
///   declare `Product.id` `@external`); `categories` resolves `Category.name`
///   by the key `id`.
/// * `tags` lists `featured` products with `@provides(fields: "maker { id }")`:
///   `Maker.id` is `@external` there, and `makers` resolves `Maker.country`
///   by that key.
pub mod hops {
    use super::*;

    pub struct CatalogProduct(ID);

    #[Object(name = "Product")]
    impl CatalogProduct {
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn name(&self) -> String {
            format!("Product#{}", self.0.as_str())
        }
    }

    pub struct CatalogQuery;

    #[Object(name = "Query")]
    impl CatalogQuery {
        async fn product_from_catalog(&self, id: ID) -> CatalogProduct {
            CatalogProduct(id)
        }
        #[graphql(entity)]
        async fn product(&self, id: ID) -> CatalogProduct {
            CatalogProduct(id)
        }
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Category")]
    pub struct DetailsCategory {
        details: String,
    }

    pub struct DetailsProduct(ID);

    #[Object(name = "Product")]
    impl DetailsProduct {
        #[graphql(external)]
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn category(&self) -> DetailsCategory {
            DetailsCategory {
                details: format!("Details for Product#{}", self.0.as_str()),
            }
        }
    }

    pub struct DetailsQuery;

    #[Object(name = "Query")]
    impl DetailsQuery {
        #[graphql(entity)]
        async fn product(&self, id: ID) -> DetailsProduct {
            DetailsProduct(id)
        }
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Category")]
    pub struct TagsCategory {
        id: ID,
    }

    #[derive(SimpleObject)]
    #[graphql(name = "Maker")]
    pub struct TagsMaker {
        id: ID,
    }

    pub struct TagsProduct(ID);

    #[Object(name = "Product")]
    impl TagsProduct {
        #[graphql(external)]
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn category(&self) -> TagsCategory {
            TagsCategory {
                id: ID(format!("c{}", self.0.as_str())),
            }
        }
        /// Provided under `featured` only.
        async fn maker(&self) -> TagsMaker {
            TagsMaker {
                id: ID(format!("m{}", self.0.as_str())),
            }
        }
    }

    pub struct TagsQuery;

    #[Object(name = "Query")]
    impl TagsQuery {
        async fn featured(&self) -> Vec<TagsProduct> {
            vec![TagsProduct(ID("1".into())), TagsProduct(ID("2".into()))]
        }
        #[graphql(entity)]
        async fn product(&self, id: ID) -> TagsProduct {
            TagsProduct(id)
        }
    }

    pub struct Named(ID);

    #[Object(name = "Category")]
    impl Named {
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn name(&self) -> String {
            format!("Category#{}", self.0.as_str())
        }
    }

    pub struct CategoriesQuery;

    #[Object(name = "Query")]
    impl CategoriesQuery {
        #[graphql(entity)]
        async fn category(&self, id: ID) -> Named {
            Named(id)
        }
    }

    pub struct Maker(ID);

    #[Object(name = "Maker")]
    impl Maker {
        async fn id(&self) -> &ID {
            &self.0
        }
        async fn country(&self) -> &str {
            if self.0.as_str() == "m1" {
                "FR"
            } else {
                "JP"
            }
        }
    }

    pub struct MakersQuery;

    #[Object(name = "Query")]
    impl MakersQuery {
        #[graphql(entity)]
        async fn maker(&self, id: ID) -> Maker {
            Maker(id)
        }
    }

    pub async fn start() -> Subgraphs {
        let mut routes: BTreeMap<&'static str, Exec> = BTreeMap::new();
        routes.insert("catalog", federated(CatalogQuery));
        routes.insert("details", federated(DetailsQuery));
        routes.insert("tags", federated(TagsQuery));
        routes.insert("categories", federated(CategoriesQuery));
        routes.insert("makers", federated(MakersQuery));
        serve(loopback(), routes).await
    }
}

//! The benchmark's four subgraphs as a standalone server, for
//! tests/bench/graphql.sh: `bench-subgraphs <port>` serves /accounts,
//! /inventory, /products and /reviews on 127.0.0.1:<port>.

#[path = "../tests/common/mod.rs"]
mod common;

// The gateway's allocator, so the subgraphs spend less of the shared CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(4200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let s = common::start_on(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
        eprintln!(
            "subgraphs on http://{}/{{accounts,inventory,products,reviews}}",
            s.addr
        );
        std::future::pending::<()>().await;
    });
}

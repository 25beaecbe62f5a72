use clap::Parser;

// The gateway allocates many small JSON values per request; jemalloc handles
// that pattern with less CPU and less fragmentation than glibc's malloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    graphql_gateway::run::main(graphql_gateway::run::Args::parse()).await
}

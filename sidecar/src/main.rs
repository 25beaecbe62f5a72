use clap::Parser;

// Per-request allocations (headers, h2 frames, TLS records) are a visible
// share of the proxy's CPU; mimalloc's thread-local free lists make them cheaper
// than glibc's (docs/benchmarks.md). `no_thp`: with transparent huge pages,
// its eagerly committed arena turned into 2 MiB pages and RSS grew from
// 9.7 MB to 16 MB; without them it stays where it was.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    sidecar::run::main(sidecar::run::Cli::parse())
}

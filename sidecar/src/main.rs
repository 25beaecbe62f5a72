use clap::Parser;

// Per-request allocations (headers, h2 frames, TLS records) are a visible
// share of the proxy's CPU; mimalloc's thread-local free lists make them cheaper
// than glibc's (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    sidecar::run::main(sidecar::run::Cli::parse())
}

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    graphql_gateway::run::main(graphql_gateway::run::Args::parse()).await
}

//! kumo-bench: benchmarks that drive real kumo processes over their real
//! interfaces, so the figures are what an operator would see.

mod region;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kumo-bench", about = "Benchmarks of kumo processes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List/show/allocate latency and region RSS by machine count, on
    /// SQLite and PostgreSQL, against a real `kumo region serve`.
    Region(region::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Region(a) => region::run(a).await,
    }
}

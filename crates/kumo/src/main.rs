//! The `kumo` binary: a thin shell of argument parsing and output over the
//! library crates. Every role (CLI, region, and later rack, controller and
//! agent) is a subcommand, so one file copied to a machine is all of kumo.

mod cli;
mod cli_net;
mod config;
mod output;
mod serve;

use anyhow::Result;
use clap::Parser;

#[tokio::main]
async fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = run(args).await {
        // One line a person can act on, with the causes after colons.
        eprintln!("kumo: {}", output::error_chain(&e));
        std::process::exit(1);
    }
}

async fn run(args: cli::Cli) -> Result<()> {
    match args.command {
        cli::Command::Init(a) => serve::init(a).await,
        cli::Command::Region {
            command: cli::RegionCommand::Serve(a),
        } => serve::serve(a).await,
        cli::Command::Rack {
            command: cli::RackCommand::Serve(a),
        } => serve::rack(a, args.profile.as_deref()).await,
        cmd => cli::run_client_command(cmd, args.profile.as_deref(), args.format).await,
    }
}

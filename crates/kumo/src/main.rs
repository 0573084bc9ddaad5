//! The `kumo` binary: a thin shell of argument parsing and output over the
//! library crates. Every role (CLI, region, and later rack, controller and
//! agent) is a subcommand, so one file copied to a machine is all of kumo.

mod cli;
mod cli_deploy;
mod cli_net;
mod config;
mod images;
mod lab;
mod output;
mod serve;

use anyhow::{Context, Result};
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
        cli::Command::Images {
            command: cli::ImagesCommand::BuildEphemeral(a),
        } => build_ephemeral(a).await,
        cli::Command::Agent {
            command: cli::AgentCommand::Ephemeral(a),
        } => agent_ephemeral(a).await,
        cli::Command::Lab { command } => lab::run(command, args.format).await,
        cmd => cli::run_client_command(cmd, args.profile.as_deref(), args.format).await,
    }
}

async fn build_ephemeral(a: cli::BuildEphemeralArgs) -> Result<()> {
    let data = config::default_data_dir();
    let opts = images::BuildOptions {
        output: a
            .output
            .unwrap_or_else(|| data.join("rack/boot/ephemeral/amd64")),
        cache_dir: a.cache_dir.unwrap_or_else(|| data.join("cache/ephemeral")),
        kumo_binary: match a.kumo_binary {
            Some(b) => b,
            None => std::env::current_exe().context("finding this kumo binary")?,
        },
    };
    tokio::task::spawn_blocking(move || images::build(&opts))
        .await
        .context("building the ephemeral image")?
}

async fn agent_ephemeral(a: cli::AgentEphemeralArgs) -> Result<()> {
    // Plain text: the console is a serial line, often captured to a file.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUMO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let path = a.cmdline.unwrap_or_else(|| a.root.join("proc/cmdline"));
    let cmdline =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let params = kumo_agent::BootParams::parse(&cmdline);
    tracing::info!(purpose = ?params.purpose, system_id = ?params.system_id, boot_mac = ?params.boot_mac.map(|m| m.to_string()), "kumo agent starting");
    match kumo_agent::ephemeral::run(&params, &a.root).await? {
        kumo_agent::Outcome::PowerOff if !a.no_power_off => {
            tracing::info!("done; powering off");
            kumo_agent::ephemeral::halt("poweroff")?;
        }
        kumo_agent::Outcome::Reboot if !a.no_power_off => {
            tracing::info!("done; rebooting");
            kumo_agent::ephemeral::halt("reboot")?;
        }
        outcome => tracing::info!(?outcome, "done; staying up"),
    }
    Ok(())
}

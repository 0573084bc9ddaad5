//! The `kumo` binary: a thin shell of argument parsing and output over the
//! library crates. Every role (CLI, region, and later rack, controller and
//! agent) is a subcommand, so one file copied to a machine is all of kumo.

mod bootstrap_host;
mod cli;
mod cli_deploy;
mod cli_models;
mod cli_net;
mod cli_scripts;
mod config;
mod disk_image;
mod host_container;
mod images;
mod lab;
mod output;
mod remote_region;
mod serve;
mod verify;

use anyhow::{Context, Result};
use clap::Parser;

fn main() {
    // Hook tools (`relation-get`, …) are this binary under another name.
    if let Some(tool) = std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .filter(|t| kumo_uniter::tools::TOOLS.contains(&t.as_str()))
    {
        let args: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(kumo_agent::machine::hook_tool(&tool, &args));
    }
    let args = cli::Cli::parse();
    let result = prepare(&args).and_then(|()| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(run(args))
    });
    if let Err(e) = result {
        // One line a person can act on, with the causes after colons.
        eprintln!("kumo: {}", output::error_chain(&e));
        std::process::exit(1);
    }
}

/// What must happen while kumo is still one thread.
fn prepare(args: &cli::Cli) -> Result<()> {
    if let cli::Command::Images {
        command: cli::ImagesCommand::Build(_),
    } = &args.command
    {
        disk_image::enter_private_mount_namespace()?;
    }
    Ok(())
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
        cli::Command::Images {
            command: cli::ImagesCommand::Build(a),
        } => build_disk_image(a, args.profile.as_deref(), args.format).await,
        cli::Command::Agent {
            command: cli::AgentCommand::Ephemeral(a),
        } => agent_ephemeral(a).await,
        cli::Command::Agent {
            command: cli::AgentCommand::Machine(a),
        } => agent_machine(a).await,
        cli::Command::Agent {
            command: cli::AgentCommand::Container { command },
        } => {
            init_agent_logging();
            host_container::run(command).await
        }
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

async fn build_disk_image(
    a: cli::BuildImageArgs,
    profile: Option<&str>,
    format: output::Format,
) -> Result<()> {
    let data = config::default_data_dir();
    // Know where it goes before minutes of building.
    let region = if a.no_upload {
        None
    } else {
        let (_, prof) = config::Profiles::load()?.pick(profile).context(
            "uploading the image needs a region profile (`kumo init` or `kumo login`); \
             or build with --no-upload",
        )?;
        Some(kumo_client::Client::new(&prof.url, Some(prof.key)))
    };
    let opts = disk_image::DiskImageOptions {
        name: a.name,
        release: a.release,
        mirror: a.mirror,
        size_mib: a.size_mib,
        output_dir: a.output.unwrap_or_else(|| data.join("images")),
        cache_dir: a.cache_dir.unwrap_or_else(|| data.join("cache/images")),
        extra_packages: a.packages,
    };
    // Ctrl-C reaches the command the build is running, which fails; kumo
    // itself stays up to unmount and detach what the build set up.
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("kumo: interrupted; cleaning up");
            disk_image::interrupt();
        }
    });
    let built = tokio::task::spawn_blocking(move || disk_image::build(&opts))
        .await
        .context("building the disk image")??;
    if let Some(c) = region {
        let manifest = built.path.with_file_name(format!("{}.json", built.name));
        let m = cli_deploy::Manifest::read(&manifest)?;
        let image = cli_deploy::upload_image(&c, &m, None).await?;
        output::emit(format, &vec![image], |i| cli_deploy::image_table(i))?;
    }
    Ok(())
}

/// Plain text on stderr: agents' output goes to a serial console or the
/// journal, often captured to a file.
fn init_agent_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUMO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

async fn agent_machine(a: cli::AgentMachineArgs) -> Result<()> {
    init_agent_logging();
    let config = kumo_agent::machine::AgentConfig::load(&a.config)?;
    kumo_agent::machine::run(config, a.data_dir).await?;
    Ok(())
}

async fn agent_ephemeral(a: cli::AgentEphemeralArgs) -> Result<()> {
    init_agent_logging();
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

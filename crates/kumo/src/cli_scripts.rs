//! Client commands for commissioning and testing scripts: the scripts the
//! region keeps, and what their runs on a machine left.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kumo_client::{enc, Client};
use kumo_model::scripts::{
    NewScript, Script, ScriptInfo, ScriptResult, ScriptResultOutput, ScriptType,
};

use crate::output::{emit, fields, table, time, Format};

#[derive(Subcommand, Debug)]
pub enum ScriptCommand {
    /// The scripts the region holds.
    #[command(alias = "ls")]
    List,
    /// Add a script from a file (it must start with a #! line; the
    /// ephemeral environment has busybox's /bin/sh).
    Add {
        file: PathBuf,
        /// When it runs: while commissioning (after the inventory) or testing.
        #[arg(long = "type", value_parser = ["commissioning", "testing"])]
        script_type: String,
        /// [default: the file's name without its extension]
        #[arg(long)]
        name: Option<String>,
        /// Seconds before the script is killed and counts as timed out.
        #[arg(long, default_value_t = kumo_model::scripts::DEFAULT_TIMEOUT_SECS)]
        timeout: u32,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show a script and its body.
    Show { name: String },
    /// Delete a script (not while a running task still has to run it).
    #[command(alias = "rm")]
    Delete { name: String },
}

fn scripts_table(ss: &[ScriptInfo]) -> comfy_table::Table {
    table(
        &["NAME", "TYPE", "TIMEOUT", "SIZE", "SHA256", "DESCRIPTION"],
        ss.iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.script_type.to_string(),
                    format!("{} s", s.timeout_secs),
                    format!("{} B", s.size),
                    s.sha256[..12.min(s.sha256.len())].to_owned(),
                    s.description.clone(),
                ]
            })
            .collect(),
    )
}

pub async fn scripts(c: &Client, format: Format, cmd: ScriptCommand) -> Result<()> {
    match cmd {
        ScriptCommand::List => {
            let ss: Vec<ScriptInfo> = c.get("/api/v1/scripts").await?;
            emit(format, &ss, |ss| scripts_table(ss))
        }
        ScriptCommand::Add {
            file,
            script_type,
            name,
            timeout,
            description,
        } => {
            let body = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {} (scripts are text)", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => match file.file_stem().and_then(|s| s.to_str()) {
                    Some(stem) => stem.to_owned(),
                    None => bail!("{} has no usable file name; give --name", file.display()),
                },
            };
            let req = NewScript {
                name,
                script_type: ScriptType::parse(&script_type)?,
                description,
                timeout_secs: Some(timeout),
                body,
            };
            let s: ScriptInfo = c.post("/api/v1/scripts", &req).await?;
            emit(format, &vec![s], |ss| scripts_table(ss))
        }
        ScriptCommand::Show { name } => {
            let s: Script = c.get(&format!("/api/v1/scripts/{}", enc(&name))).await?;
            if format != Format::Table {
                return emit(format, &s, |_| unreachable!());
            }
            let i = &s.info;
            println!(
                "{}",
                fields(vec![
                    ("name", i.name.clone()),
                    ("type", i.script_type.to_string()),
                    ("description", i.description.clone()),
                    ("timeout", format!("{} s", i.timeout_secs)),
                    ("size", format!("{} bytes", i.size)),
                    ("sha256", i.sha256.clone()),
                    ("added", time(i.created_at)),
                ])
            );
            println!();
            print!("{}", s.body);
            if !s.body.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        ScriptCommand::Delete { name } => {
            c.delete(&format!("/api/v1/scripts/{}", enc(&name))).await?;
            println!("deleted script {name}");
            Ok(())
        }
    }
}

/// The latest script runs of a machine, below `kumo machines show`.
pub async fn print_results(c: &Client, machine: &str) -> Result<()> {
    let rs: Vec<ScriptResult> = c
        .get(&format!("/api/v1/machines/{}/script-results", enc(machine)))
        .await?;
    if rs.is_empty() {
        return Ok(());
    }
    let rows = rs
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.script_type.to_string(),
                r.outcome.as_str().to_owned(),
                r.exit_status
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                format!("{:.1}", r.duration_ms() as f64 / 1000.0),
                time(r.recorded_at),
            ]
        })
        .collect();
    println!("\nscript results (`kumo machines script-output {machine} NAME` shows the output):");
    println!(
        "{}",
        table(
            &["SCRIPT", "TYPE", "OUTCOME", "EXIT", "SECONDS", "RECORDED"],
            rows
        )
    );
    Ok(())
}

/// What one script printed on a machine, as it printed it.
pub async fn print_output(
    c: &Client,
    format: Format,
    machine: &str,
    name: &str,
    stderr: bool,
) -> Result<()> {
    let r: ScriptResultOutput = c
        .get(&format!(
            "/api/v1/machines/{}/script-results/{}",
            enc(machine),
            enc(name)
        ))
        .await?;
    if format != Format::Table {
        return emit(format, &r, |_| unreachable!());
    }
    let (text, cut) = if stderr {
        (&r.stderr, r.result.stderr_truncated)
    } else {
        (&r.stdout, r.result.stdout_truncated)
    };
    print!("{text}");
    if cut {
        eprintln!(
            "kumo: the {} of {name} was cut at {} bytes",
            if stderr { "stderr" } else { "stdout" },
            kumo_model::scripts::MAX_OUTPUT_BYTES
        );
    }
    Ok(())
}

//! `kumo bootstrap --to ssh:USER@HOST`: the controller on a machine of its
//! own, as Juju bootstraps onto a cloud machine, instead of in the region
//! process. Over SSH this installs this very binary, initialises a
//! database and an admin API key there, gives the controller an SSH key of
//! its own (for the machines it adds with `ssh:`), and runs
//! `kumo region serve` as the `kumo-controller` service; then it
//! bootstraps that controller and saves a profile for it.
//!
//! Every step is safe to repeat: a second run over a half-done or a
//! finished bootstrap reuses the host's database, key and service.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kumo_client::Client;
use serde_json::Value;

use crate::cli_models::{authorized_keys, print_bootstrap, BootstrapArgs};
use crate::config::{Profile, Profiles};

/// Where the controller keeps its database, API key and SSH key.
const DATA_DIR: &str = "/var/lib/kumo-controller";

fn controller_unit() -> String {
    format!(
        "[Unit]\n\
         Description=kumo controller\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Environment=KUMO_SSH_KEY={DATA_DIR}/ssh/id_ed25519\n\
         Environment=HOME=/root\n\
         ExecStart=/usr/local/bin/kumo region serve --data-dir {DATA_DIR}\n\
         Restart=always\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The host's half: a database with an admin and API key (made once; the
/// key is kept root-only beside it so a rerun finds it), the controller's
/// SSH key pair (made once). Prints the API key, then the public key.
fn prepare_script(port: u16, host: &str) -> String {
    format!(
        "set -e; D={DATA_DIR}; mkdir -p $D; chmod 700 $D; \
         if [ ! -s $D/bootstrap.key ]; then \
           if [ -e $D/region.toml ]; then echo \"$D holds a kumo database that kumo bootstrap did not make; remove it or bootstrap elsewhere\" >&2; exit 3; fi; \
           /usr/local/bin/kumo init --data-dir $D --listen 0.0.0.0:{port} --key-only > $D/bootstrap.key.new; \
           chmod 600 $D/bootstrap.key.new; mv $D/bootstrap.key.new $D/bootstrap.key; \
         fi; \
         if [ ! -s $D/ssh/id_ed25519 ]; then \
           mkdir -p $D/ssh; rm -f $D/ssh/id_ed25519 $D/ssh/id_ed25519.pub; \
           ssh-keygen -q -t ed25519 -N \"\" -C kumo-controller@{host} -f $D/ssh/id_ed25519; \
         fi; \
         cat $D/bootstrap.key; cat $D/ssh/id_ed25519.pub"
    )
}

/// Metal models on the controller take machines from profile `name`'s
/// region: its URL and key go to the host, and the controller's SSH key
/// to the profile's user, whose keys deployed machines let in.
async fn link_region<F, Fut>(name: &str, controller_key: &str, host: &str, run: &F) -> Result<()>
where
    F: Fn(String, Option<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>>>,
{
    let (_, p) = Profiles::load()?.pick(Some(name))?;
    let region = Client::new(&p.url, Some(p.key.clone()));
    let added: Result<Value, _> = region
        .post(
            "/api/v1/ssh-keys",
            &serde_json::json!({ "key": controller_key }),
        )
        .await;
    match added {
        Ok(_) => {}
        Err(kumo_client::ClientError::Api { status: 409, .. }) => {}
        Err(e) => {
            return Err(anyhow!(e)).with_context(|| {
                format!("adding the controller's SSH key to the region at {}", p.url)
            })
        }
    }
    let file = crate::remote_region::RemoteRegionFile {
        url: p.url.clone(),
        key: p.key.clone(),
    };
    run(
        format!(
            "umask 077 && cat > {DATA_DIR}/{}",
            crate::remote_region::FILE_NAME
        ),
        Some(serde_json::to_vec_pretty(&file)?),
    )
    .await
    .with_context(|| format!("giving the controller on {host} the region at {}", p.url))?;
    println!(
        "  metal models take machines from the region at {} (profile {name})",
        p.url
    );
    Ok(())
}

pub async fn bootstrap_on_host(a: BootstrapArgs) -> Result<()> {
    let to = a.to.clone().expect("--to given");
    let Some(target) = to.strip_prefix("ssh:") else {
        bail!("--to {to:?}: expected ssh:USER@HOST, the host to run the controller on");
    };
    let Some((user, host)) = target
        .split_once('@')
        .filter(|(u, h)| !u.is_empty() && !h.is_empty())
    else {
        bail!("--to {to:?}: expected ssh:USER@HOST, e.g. ssh:root@10.0.0.5");
    };
    let url = format!("http://{host}:{}", a.port);
    let profile = a
        .name
        .clone()
        .unwrap_or_else(|| format!("controller-{host}"));
    let (mut keys, key_files) = authorized_keys(&a.authorized_keys)?;

    let data = crate::config::default_data_dir();
    let known_hosts = data.join("ssh_known_hosts");
    let ssh_key = std::env::var_os("KUMO_SSH_KEY")
        .map(PathBuf::from)
        .or_else(|| Some(data.join("lab/id_ed25519")).filter(|k| k.is_file()));
    let sudo = user != "root";
    let run = |script: String, stdin: Option<Vec<u8>>| {
        // ssh joins its arguments into one remote command line.
        let mut argv = vec!["sh".to_string(), "-c".to_string(), format!("'{script}'")];
        if sudo {
            argv.splice(0..0, ["sudo".to_string(), "-n".to_string()]);
        }
        let (known_hosts, ssh_key) = (known_hosts.clone(), ssh_key.clone());
        async move {
            kumo_controller::provider::ssh_exec(
                target,
                &known_hosts,
                ssh_key.as_deref(),
                &argv,
                stdin,
            )
            .await
            .map_err(|e| anyhow!(e))
        }
    };

    let step = Instant::now();
    let exe = std::env::current_exe().context("finding this kumo binary")?;
    let binary = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    run(
        "mkdir -p /usr/local/bin && cat > /usr/local/bin/kumo.new && chmod 755 /usr/local/bin/kumo.new && mv /usr/local/bin/kumo.new /usr/local/bin/kumo".into(),
        Some(binary),
    )
    .await
    .with_context(|| format!("installing kumo on {host}"))?;
    println!(
        "installed kumo on {host} in {:.1} s",
        step.elapsed().as_secs_f64()
    );
    let out = run(prepare_script(a.port, host), None)
        .await
        .with_context(|| format!("initialising the controller's database on {host}"))?;
    let out = String::from_utf8_lossy(&out);
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(api_key), Some(controller_key)) = (lines.next(), lines.next()) else {
        bail!(
            "initialising the controller on {host}: expected its API key and SSH key, got {out:?}"
        );
    };
    let (api_key, controller_key) = (api_key.to_string(), controller_key.to_string());
    if let Some(name) = &a.region_profile {
        link_region(name, &controller_key, host, &run).await?;
    }
    run(
        "cat > /etc/systemd/system/kumo-controller.service && systemctl daemon-reload && systemctl enable -q kumo-controller.service && systemctl restart kumo-controller.service".into(),
        Some(controller_unit().into_bytes()),
    )
    .await
    .with_context(|| format!("starting the kumo-controller service on {host}"))?;

    let c = Client::new(&url, Some(api_key.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c.get::<Value>("/api/v1/whoami").await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!(e)).with_context(|| {
                    format!("the controller on {host} did not answer at {url} within 60 s (journalctl -u kumo-controller there)")
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }

    // Container machines the controller makes let it in too.
    keys.push(controller_key.clone());
    let b = a.config(a.agent_url.clone().unwrap_or_else(|| url.clone()), keys);
    let _: Value = c
        .put("/api/v1/controller", &b)
        .await
        .with_context(|| format!("bootstrapping the controller at {url}"))?;
    let mut profiles = Profiles::load()?;
    profiles.profiles.insert(
        profile.clone(),
        Profile {
            url: url.clone(),
            key: api_key,
            model: Some("default".into()),
        },
    );
    profiles.current = Some(profile.clone());
    profiles.save()?;

    println!(
        "bootstrapped the controller on {host} (service kumo-controller, data in {DATA_DIR}) in {:.1} s",
        step.elapsed().as_secs_f64()
    );
    println!("  API at {url}; profile {profile} saved and made current");
    print_bootstrap(&b, &key_files);
    println!("  the controller logs in to machines added with ssh:USER@HOST with this key; authorize it there:");
    println!("    {controller_key}");
    println!("current model: default (profile {profile})");
    Ok(())
}

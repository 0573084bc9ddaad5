//! `kumo init` and `kumo region serve`: the region's own process.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kumo_model::api::CreateUser;
use kumo_region::{Actor, Region, RegionConfig, RegionError};

use crate::cli::{InitArgs, RackServeArgs, ServeArgs};
use crate::config::{Profile, Profiles, RegionFile, DEFAULT_LISTEN};

fn generate_password() -> String {
    use rand_like::fill;
    let mut b = [0u8; 18];
    fill(&mut b);
    b.iter()
        .map(|x| {
            (b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")[*x as usize % 55] as char
        })
        .collect()
}

/// OS randomness without another dependency: the region's entropy source.
mod rand_like {
    pub fn fill(buf: &mut [u8]) {
        use kumo_region::Entropy;
        kumo_region::OsEntropy.fill(buf)
    }
}

pub async fn init(a: InitArgs) -> Result<()> {
    let key_only = a.key_only;
    let dir = initialise(a).await?;
    if key_only {
        return Ok(());
    }
    println!("\nnext: kumo region serve --data-dir {}", dir.display());
    Ok(())
}

/// `kumo init` but for the advice on what to do next: the data
/// directory, admin, API key and profile, printed once. Returns the directory.
pub async fn initialise(a: InitArgs) -> Result<PathBuf> {
    let dir = a.data_dir.unwrap_or_else(crate::config::default_data_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing data directory {}", dir.display()))?;
    }
    let database = a
        .database
        .unwrap_or_else(|| format!("sqlite:{}", dir.join("kumo.db").display()));
    let listen = a.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let region = Region::open(&database, &dir.join("secret.key"), RegionConfig::default())
        .await
        .with_context(|| format!("opening the region database {database}"))?;
    let generated = a.password.is_none();
    let password = a.password.unwrap_or_else(generate_password);
    match region.create_user(&Actor::system(), CreateUser { username: a.admin.clone(), password: password.clone(), admin: true }).await {
        Ok(_) => {}
        Err(RegionError::AlreadyExists { .. }) => bail!(
            "{} is already initialised: user {:?} exists. Make another API key with `kumo users api-key {}`",
            dir.display(),
            a.admin,
            a.admin
        ),
        Err(e) => return Err(e.into()),
    }
    let key = region.create_api_key(&Actor::system(), &a.admin).await?.key;
    RegionFile {
        database: database.clone(),
        listen: listen.clone(),
    }
    .save(&dir)?;
    region.store().close().await;

    let url = format!("http://{listen}");
    if a.key_only {
        println!("{key}");
        return Ok(dir);
    }
    if !a.no_login {
        let mut profiles = Profiles::load()?;
        profiles.profiles.insert(
            a.profile.clone(),
            Profile {
                url: url.clone(),
                key: key.clone(),
                model: None,
            },
        );
        profiles.current = Some(a.profile.clone());
        profiles.save()?;
    }
    println!("initialised kumo in {}", dir.display());
    println!("  database:  {database}");
    println!("  admin:     {}", a.admin);
    if generated {
        println!("  password:  {password}   (shown once)");
    }
    println!("  API key:   {key}   (shown once)");
    if !a.no_login {
        println!(
            "  profile:   {} → {url} (saved in {})",
            a.profile,
            Profiles::path().display()
        );
    }
    Ok(dir)
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUMO_LOG")
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing what is in flight");
}

pub async fn serve(a: ServeArgs) -> Result<()> {
    init_logging(a.log_json);
    let dir: PathBuf = a.data_dir.unwrap_or_else(crate::config::default_data_dir);
    let file = RegionFile::load(&dir)?;
    let database = a.database.unwrap_or(file.database);
    let listen = a.listen.unwrap_or(file.listen);
    let config = RegionConfig {
        images_dir: Some(dir.join("images")),
        package_proxy: a.package_proxy.clone(),
        ..RegionConfig::default()
    };
    let region = Region::open(&database, &dir.join("secret.key"), config)
        .await
        .with_context(|| format!("opening the region database {database}"))?;
    // The controller lives in the region process (`kumo bootstrap`).
    let provider = kumo_controller::provider::ContainersProvider::new(
        dir.join("containers"),
        a.containers_cache
            .clone()
            .unwrap_or_else(|| dir.join("cache/containers")),
        std::env::current_exe().context("finding this kumo binary")?,
    );
    let controller = kumo_controller::Controller::open(
        region.store().clone(),
        kumo_controller::ControllerConfig::new(dir.clone()),
        std::sync::Arc::new(kumo_region::SystemClock),
        std::sync::Arc::new(kumo_region::OsEntropy),
        std::sync::Arc::new(provider),
        kumo_region::SecretBox::load_or_create(&dir.join("secret.key"), &kumo_region::OsEntropy)
            .context("reading the region's secret key")?,
    )
    .await
    .context("loading the controller's models")?;
    // A controller bootstrapped on a machine of its own reaches the
    // operator's region over its API; otherwise the region is this process.
    match crate::remote_region::RemoteRegionFile::load(&dir)? {
        Some(f) => {
            tracing::info!(region = %f.url, "metal models use the region over its API");
            controller.set_metal_backend(std::sync::Arc::new(
                crate::remote_region::RemoteRegion::new(&f),
            ));
        }
        None => controller.set_metal_backend(std::sync::Arc::new(RegionMachines(region.clone()))),
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let provisioner = tokio::spawn(controller.clone().run_provisioner(stop_rx.clone()));
    let workers = region.spawn_workers(stop_rx);
    tracing::info!(%listen, data_dir = %dir.display(), engine = ?region.store().engine(), "region serving");
    let stopping = region.clone();
    let shutdown = async move {
        stop_signal().await;
        stopping.begin_shutdown();
    };
    kumo_api::serve_with(region.clone(), Some(controller), listener, shutdown)
        .await
        .context("serving the API")?;
    let _ = stop_tx.send(true);
    let _ = workers.await;
    let _ = provisioner.await;
    region.store().close().await;
    tracing::info!("region stopped");
    Ok(())
}

/// The `metal` provider's view of the region, in process: the controller
/// allocates, deploys and releases region machines as the model's owner,
/// as that user would through the API.
struct RegionMachines(Region);

impl RegionMachines {
    fn owner(name: &str) -> Actor {
        Actor {
            username: name.to_string(),
            admin: false,
        }
    }

    async fn view(&self, m: kumo_model::Machine) -> kumo_controller::MetalMachine {
        let id = m.system_id.to_string();
        let addresses = self
            .0
            .machine_addresses(&id)
            .await
            .map(|ips| ips.into_iter().map(|a| a.ip).collect())
            .unwrap_or_default();
        kumo_controller::MetalMachine {
            system_id: id,
            hostname: m.hostname.to_string(),
            status: m.status,
            status_message: m.status_message,
            owner: m.owner,
            addresses,
        }
    }
}

#[async_trait::async_trait]
impl kumo_controller::MetalBackend for RegionMachines {
    async fn allocate(
        &self,
        owner: &str,
        constraints: &str,
        agent_name: &str,
    ) -> Result<kumo_controller::MetalMachine, String> {
        let req = kumo_model::api::AllocateRequest {
            constraints: constraints.to_string(),
            agent_name: Some(agent_name.to_string()),
        };
        let m = self
            .0
            .allocate(&Self::owner(owner), req)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.view(m).await)
    }

    async fn deploy(
        &self,
        owner: &str,
        system_id: &str,
    ) -> Result<kumo_controller::MetalMachine, String> {
        let m = self
            .0
            .machine_action(
                &Self::owner(owner),
                system_id,
                "deploy",
                kumo_model::api::ActionOptions::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.view(m).await)
    }

    async fn machine(
        &self,
        _: &str,
        system_id: &str,
    ) -> Result<Option<kumo_controller::MetalMachine>, String> {
        match self.0.machine(system_id).await {
            Ok(m) => Ok(Some(self.view(m).await)),
            Err(RegionError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn release(&self, owner: &str, system_id: &str) -> Result<(), String> {
        let m = match self.0.machine(system_id).await {
            Ok(m) => m,
            Err(RegionError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        // Someone else's now (released and allocated again): not ours to give back.
        if m.owner.as_deref() != Some(owner) {
            return Ok(());
        }
        for action in kumo_controller::provider::release_actions(m.status) {
            // Aborting is an admin's action; the controller stops its own
            // deployment as the region's system user. The region's default
            // erase (none unless the operator asks).
            let actor = match *action {
                "abort" => Actor::system(),
                _ => Self::owner(owner),
            };
            self.0
                .machine_action(&actor, system_id, action, Default::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// `kumo rack serve`: the rack process, talking to the profile's region.
pub async fn rack(a: RackServeArgs, profile: Option<&str>) -> Result<()> {
    init_logging(a.log_json);
    let (profile_name, p) = Profiles::load()?.pick(profile)?;
    let region = kumo_client::Client::new(&p.url, Some(p.key.clone()));
    let name = match a.name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "rack".into()),
    };
    let data_dir = a
        .data_dir
        .unwrap_or_else(|| crate::config::default_data_dir().join("rack"));
    let mut opts = kumo_rack::RackOptions::new(&name, a.interfaces, data_dir);
    opts.ipxe_dir = a.ipxe_dir;
    opts.http_port = a.http_port;
    opts.tftp_port = a.tftp_port;
    opts.dns_port = (!a.no_dns).then_some(a.dns_port);
    opts.dns_xdp = a
        .dns_xdp
        .as_deref()
        .map(str::parse::<kumo_rack::XdpMode>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--dns-xdp: {e}"))?;
    opts.dns_upstreams = if a.dns_upstreams.is_empty() {
        resolv_conf_nameservers()
    } else {
        a.dns_upstreams
            .iter()
            .map(|u| parse_upstream(u))
            .collect::<Result<_>>()?
    };
    opts.router_advertisements = !a.no_router_advertisements;
    opts.package_proxy_port = (!a.no_package_proxy).then_some(a.package_proxy_port);
    opts.rogue_dhcp_interval =
        (a.rogue_dhcp_interval > 0).then(|| std::time::Duration::from_secs(a.rogue_dhcp_interval));
    tracing::info!(rack = %name, profile = %profile_name, region = %p.url, "rack starting");
    kumo_rack::serve(opts, region, stop_signal())
        .await
        .context("serving the rack")
}

fn parse_upstream(s: &str) -> Result<std::net::SocketAddr> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s.parse().with_context(|| {
        format!("--dns-upstream {s:?}: expected an address, e.g. 192.0.2.53 or 192.0.2.53:53")
    })?;
    Ok((ip, 53).into())
}

/// The host's resolvers, which the rack forwards to unless told otherwise.
fn resolv_conf_nameservers() -> Vec<std::net::SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| (ip, 53).into())
        .collect()
}

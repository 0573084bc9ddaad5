//! `kumo verify openstack`: the install guide's own checks, run against a
//! deployed cloud with the real `openstack` client on the keystone unit
//! (where the charm wrote admin-openrc and demo-openrc, §3-3), each printed
//! as pass, fail or skip with the guide's section.
//!
//! Every check is a shell script sent through `kumo exec` and a pure judge
//! of its output, so the judging is unit-tested here and the cloud is
//! touched only through the client operators use. Setup steps of §10
//! (networks, router) and §10-5 (a server) find before they create, so a
//! second run reuses what the first made.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use kumo_client::{enc, Client};
use kumo_model::orchestra::{ActionInfo, Exec, Status};
use serde_json::Value;

use crate::cli_models::{wait_action, ModelOpt};

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// What to verify: `openstack`.
    pub what: String,
    /// The unit with the `openstack` client and the openrc files.
    #[arg(long, default_value = "keystone/0")]
    pub client_unit: String,
    /// The network node, where the external network's address lives.
    #[arg(long, default_value = "neutron-gateway/0")]
    pub gateway_unit: String,
    /// The external (provider) network's subnet, gateway and pool (§10-1).
    #[arg(long, default_value = "203.0.113.0/24")]
    pub ext_cidr: String,
    #[arg(long, default_value = "203.0.113.1")]
    pub ext_gateway: String,
    #[arg(long, default_value = "203.0.113.101-203.0.113.200")]
    pub ext_pool: String,
    /// The physical network name the flat provider network is on.
    #[arg(long, default_value = "provider")]
    pub physnet: String,
    /// The demo project's network (§10-2).
    #[arg(long, default_value = "172.16.1.0/24")]
    pub demo_cidr: String,
    /// Seconds to wait for each check that waits (services up, a server
    /// ACTIVE).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    #[command(flatten)]
    pub m: ModelOpt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail(String),
    /// Cannot pass on these machines; says why and what was proven.
    Skip(String),
}

/// What a check's output must show.
type Judge = fn(&str) -> Outcome;

struct Check {
    section: &'static str,
    name: &'static str,
    /// Runs on the client unit unless it names another.
    on: Option<String>,
    script: String,
    judge: Judge,
    /// Run again until it passes, for this long (services coming up).
    retry: bool,
}

pub async fn run(c: &Client, model: &str, a: &VerifyArgs) -> Result<()> {
    if a.what != "openstack" {
        bail!("kumo verify {}: only `openstack` can be verified", a.what);
    }
    let status: Status = c
        .get(&format!("/api/v1/models/{}/status", enc(model)))
        .await
        .with_context(|| format!("model {model}"))?;
    let address = |app: &str| -> Result<String> {
        status
            .units
            .iter()
            .find(|(name, _)| name.split('/').next() == Some(app))
            .and_then(|(_, u)| u.address.clone())
            .with_context(|| format!("model {model} has no unit of {app} with an address"))
    };
    for unit in [&a.client_unit, &a.gateway_unit] {
        if !status.units.contains_key(unit.as_str()) {
            bail!("model {model} has no unit {unit}");
        }
    }
    let dashboard = address("openstack-dashboard").ok();
    // What the cinder charm reported it cannot do on these machines.
    let volume_limit = status
        .units
        .iter()
        .filter(|(name, _)| name.starts_with("cinder/"))
        .find_map(|(_, u)| {
            u.message
                .split_once("volumes unavailable: ")
                .map(|(_, why)| why.to_string())
        });
    let checks = checks(a, dashboard.as_deref(), volume_limit);
    let mut router_ip: Option<String> = None;
    println!(
        "verifying the OpenStack of model {model} with the openstack client on {}",
        a.client_unit
    );
    let started = Instant::now();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for check in &checks {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(if check.retry { a.timeout } else { 0 });
        let outcome = loop {
            let unit = check.on.as_deref().unwrap_or(&a.client_unit);
            let script = if check.script.contains(ROUTER_IP) {
                match &router_ip {
                    Some(ip) => check.script.replace(ROUTER_IP, ip),
                    None => break Outcome::Fail("the router has no external address".into()),
                }
            } else {
                check.script.clone()
            };
            let out = match exec(c, model, unit, &script, a.timeout).await {
                Ok(out) => out,
                Err(e) => break Outcome::Fail(format!("{e:#}")),
            };
            let o = if out.status == "completed" {
                if check.section == "10-3" {
                    router_ip = serde_json::from_str(out.stdout.trim())
                        .ok()
                        .and_then(|v| router_gateway_ip(&v));
                }
                (check.judge)(&out.stdout)
            } else {
                Outcome::Fail(format!(
                    "exit: {}{}",
                    out.message,
                    last_lines(&format!("{}{}", out.stdout, out.stderr), 6)
                ))
            };
            if matches!(o, Outcome::Fail(_)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            break o;
        };
        let secs = t.elapsed().as_secs_f64();
        let (mark, text) = match &outcome {
            Outcome::Pass(s) => {
                passed += 1;
                ("PASS", s)
            }
            Outcome::Fail(s) => {
                failed += 1;
                ("FAIL", s)
            }
            Outcome::Skip(s) => {
                skipped += 1;
                ("SKIP", s)
            }
        };
        println!(
            "{mark} §{:<6} {} ({secs:.1} s): {text}",
            check.section, check.name
        );
    }
    println!(
        "{passed} passed, {failed} failed, {skipped} skipped in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}

async fn exec(
    c: &Client,
    model: &str,
    unit: &str,
    script: &str,
    timeout: u64,
) -> Result<ActionInfo> {
    // The script travels base64-encoded: no quoting between here and bash.
    let b64 = base64::engine::general_purpose::STANDARD.encode(script);
    let ids: Vec<u64> = c
        .post(
            &format!("/api/v1/models/{}/exec", enc(model)),
            &Exec {
                command: format!("echo {b64} | base64 -d | bash"),
                targets: vec![unit.to_string()],
            },
        )
        .await?;
    let id = *ids.first().context("the controller ran nothing")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    wait_action(c, model, id, Some(deadline)).await
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(n)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" | "))
    }
}

/// A 512-byte x86 boot sector that writes a line to the first serial port
/// and halts: a bootable image made here, so nothing is downloaded (§5-9).
pub fn boot_sector() -> Vec<u8> {
    const MESSAGE: &[u8] = b"kumo test image booted\r\n\0";
    let mut s = vec![
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xBE, 0x17, 0x7C, // mov si, 0x7c17 (the message)
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8 (COM1)
        0xFC, // cld
        0xAC, // next: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz done
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp next
        0xFA, // done: cli
        0xF4, // hlt
        0xEB, 0xFD, // jmp hlt
    ];
    debug_assert_eq!(s.len(), 0x17);
    s.extend_from_slice(MESSAGE);
    s.resize(510, 0);
    s.extend_from_slice(&[0x55, 0xAA]);
    s
}

pub const BOOT_MESSAGE: &str = "kumo test image booted";

/// Stands for the router's external address in a script.
const ROUTER_IP: &str = "@ROUTER_IP@";

fn checks(a: &VerifyArgs, dashboard: Option<&str>, volume_limit: Option<String>) -> Vec<Check> {
    let admin = ". /root/admin-openrc\nset -euo pipefail\n";
    let demo = ". /root/demo-openrc\nset -euo pipefail\n";
    let image = base64::engine::general_purpose::STANDARD.encode(boot_sector());
    let (pool_start, pool_end) = a.ext_pool.split_once('-').unwrap_or((&a.ext_pool, ""));
    let plain = |section, name, script: String, judge: Judge| Check {
        section,
        name,
        on: None,
        script,
        judge,
        retry: false,
    };
    let mut v = vec![
        plain(
            "4-11",
            "token issue as admin",
            format!("{admin}openstack token issue -f json"),
            judge_token,
        ),
        plain(
            "4-11",
            "token issue as demo",
            format!("{demo}openstack token issue -f json"),
            judge_token,
        ),
        plain(
            "4-10",
            "project, user and role lists",
            format!(
                "{admin}echo '{{\"projects\":'$(openstack project list -f json)',\
                 \"users\":'$(openstack user list -f json)',\
                 \"roles\":'$(openstack role list -f json)'}}'"
            ),
            judge_identity_lists,
        ),
        plain(
            "5-9",
            "image create and list",
            format!(
                "{admin}if ! openstack image show kumo-boot -f value -c status 2>/dev/null | grep -qx active; then\n\
                 openstack image delete kumo-boot 2>/dev/null || true\n\
                 echo {image} | base64 -d > /tmp/kumo-boot.img\n\
                 truncate -s 1M /tmp/kumo-boot.img\n\
                 openstack image create kumo-boot --file /tmp/kumo-boot.img --disk-format raw \
                 --container-format bare --public >/dev/null\nfi\n\
                 openstack image list -f json"
            ),
            judge_image,
        ),
        Check {
            retry: true,
            ..plain(
                "7-4",
                "compute service list, all up",
                format!("{admin}openstack compute service list -f json"),
                judge_compute_services,
            )
        },
        Check {
            retry: true,
            ..plain(
                "7-4",
                "hypervisor list",
                format!("{admin}openstack hypervisor list -f json"),
                judge_hypervisors,
            )
        },
        Check {
            retry: true,
            ..plain(
                "9-6",
                "network agent list, all alive",
                format!("{admin}openstack network agent list -f json"),
                judge_agents,
            )
        },
        plain(
            "10-1",
            "ext-net, the external network",
            format!(
                "{admin}openstack network show ext-net >/dev/null 2>&1 || \
                 openstack network create ext-net --external --share \
                 --provider-network-type flat --provider-physical-network {physnet} >/dev/null\n\
                 openstack subnet show ext-subnet >/dev/null 2>&1 || \
                 openstack subnet create ext-subnet --network ext-net --subnet-range {cidr} \
                 --gateway {gw} --allocation-pool start={ps},end={pe} --no-dhcp >/dev/null\n\
                 openstack network show ext-net -f json",
                physnet = a.physnet,
                cidr = a.ext_cidr,
                gw = a.ext_gateway,
                ps = pool_start,
                pe = pool_end,
            ),
            judge_ext_net,
        ),
        plain(
            "10-2",
            "demo-net, the project network (MTU 1450)",
            format!(
                "{demo}openstack network show demo-net >/dev/null 2>&1 || \
                 openstack network create demo-net >/dev/null\n\
                 openstack subnet show demo-subnet >/dev/null 2>&1 || \
                 openstack subnet create demo-subnet --network demo-net \
                 --subnet-range {cidr} --dns-nameserver 8.8.4.4 >/dev/null\n\
                 openstack network show demo-net -f json",
                cidr = a.demo_cidr
            ),
            judge_demo_net,
        ),
        plain(
            "10-3",
            "demo-router with a gateway on ext-net",
            format!(
                "{demo}openstack router show demo-router >/dev/null 2>&1 || \
                 openstack router create demo-router >/dev/null\n\
                 openstack router show demo-router -f json -c interfaces_info | grep -q ip_address || \
                 openstack router add subnet demo-router demo-subnet\n\
                 openstack router show demo-router -f json -c external_gateway_info | \
                 grep -q ip_address || openstack router set demo-router --external-gateway ext-net\n\
                 openstack router show demo-router -f json"
            ),
            judge_router,
        ),
        Check {
            on: Some(a.gateway_unit.clone()),
            retry: true,
            ..plain(
                "10-4",
                "ping of the router's gateway address",
                // The router check's answer fills in the address; the
                // network node pings it from the external network's side.
                format!("ping -c 3 -W 2 {ROUTER_IP}"),
                judge_ping,
            )
        },
        Check {
            retry: false,
            ..plain(
                "10-5",
                "a server booted to ACTIVE",
                format!(
                    "{admin}openstack flavor show kumo.tiny >/dev/null 2>&1 || \
                     openstack flavor create kumo.tiny --ram 64 --disk 1 --vcpus 1 --public >/dev/null\n\
                     . /root/demo-openrc\n\
                     if openstack server show kumo-test -f value -c status 2>/dev/null | grep -qx ERROR; then\n\
                     openstack server delete --wait kumo-test; fi\n\
                     openstack server show kumo-test >/dev/null 2>&1 || \
                     openstack server create kumo-test --flavor kumo.tiny --image kumo-boot \
                     --network demo-net >/dev/null\n\
                     for i in $(seq {t}); do\n\
                     s=$(openstack server show kumo-test -f value -c status)\n\
                     [ \"$s\" = ACTIVE ] || [ \"$s\" = ERROR ] && break; sleep 2; done\n\
                     for i in $(seq 30); do\n\
                     openstack console log show kumo-test 2>/dev/null | grep -q '{BOOT_MESSAGE}' && break\n\
                     sleep 2; done\n\
                     echo '{{\"server\":'$(openstack server show kumo-test -f json -c status -c fault)',\
                     \"console\":'$(openstack console log show kumo-test 2>/dev/null | grep -c '{BOOT_MESSAGE}')'}}'",
                    t = a.timeout / 2
                ),
                judge_server,
            )
        },
        plain(
            "11-9-6",
            "a 1 GB volume available",
            format!(
                "{admin}svc=$(openstack volume service list -f json)\n\
                 . /root/demo-openrc\n\
                 if openstack volume show kumo-test-volume -f value -c status 2>/dev/null | grep -qx error; then\n\
                 openstack volume delete kumo-test-volume; sleep 2; fi\n\
                 openstack volume show kumo-test-volume >/dev/null 2>&1 || \
                 openstack volume create kumo-test-volume --size 1 >/dev/null\n\
                 for i in $(seq 60); do\n\
                 s=$(openstack volume show kumo-test-volume -f value -c status)\n\
                 [ \"$s\" = available ] || [ \"$s\" = error ] && break; sleep 2; done\n\
                 echo '{{\"services\":'$svc',\"status\":\"'$s'\",\"limit\":{limit}}}'",
                limit = serde_json::to_string(&volume_limit.unwrap_or_default()).unwrap_or_default()
            ),
            judge_volume,
        ),
    ];
    match dashboard {
        Some(host) => v.push(plain(
            "12-3",
            "Horizon's login page and a login as demo",
            format!(
                "{demo}u=http://{host}/horizon\n\
                 rm -f /tmp/kumo-horizon.jar\n\
                 page=$(curl -s -c /tmp/kumo-horizon.jar -b /tmp/kumo-horizon.jar $u/auth/login/)\n\
                 token=$(printf '%s' \"$page\" | grep -o 'name=\"csrfmiddlewaretoken\" value=\"[^\"]*\"' | \
                 head -n1 | sed 's/.*value=\"//; s/\"$//')\n\
                 [ -n \"$token\" ] || {{ echo 'no login form'; exit 0; }}\n\
                 code=$(curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}' \
                 -c /tmp/kumo-horizon.jar -b /tmp/kumo-horizon.jar -e $u/auth/login/ \
                 --data-urlencode csrfmiddlewaretoken=$token --data-urlencode region=default \
                 --data-urlencode domain=Default \
                 --data-urlencode username=$OS_USERNAME --data-urlencode password=$OS_PASSWORD \
                 $u/auth/login/)\n\
                 echo \"login form; after login: $code\""
            ),
            judge_horizon,
        )),
        None => v.push(Check {
            script: "true".into(),
            ..plain(
                "12-3",
                "Horizon's login page and a login as demo",
                String::new(),
                |_| Outcome::Fail("the model has no openstack-dashboard unit".into()),
            )
        }),
    }
    v
}

fn json(out: &str) -> Result<Value, Outcome> {
    serde_json::from_str(out.trim())
        .map_err(|e| Outcome::Fail(format!("unreadable output ({e}){}", last_lines(out, 4))))
}

macro_rules! parse {
    ($out:expr) => {
        match json($out) {
            Ok(v) => v,
            Err(o) => return o,
        }
    };
}

fn names(v: &Value, field: &str) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x[field].as_str().map(str::to_string))
        .collect()
}

fn judge_token(out: &str) -> Outcome {
    let v = parse!(out);
    match (v["id"].as_str(), v["project_id"].as_str()) {
        (Some(id), Some(p)) if !id.is_empty() => Outcome::Pass(format!(
            "token for project {p}, expires {}",
            v["expires"].as_str().unwrap_or("?")
        )),
        _ => Outcome::Fail(format!("no token in {v}")),
    }
}

fn judge_identity_lists(out: &str) -> Outcome {
    let v = parse!(out);
    let projects = names(&v["projects"], "Name");
    let users = names(&v["users"], "Name");
    let roles = names(&v["roles"], "Name");
    let missing: Vec<String> = [
        (
            "project",
            &projects,
            ["admin", "service", "demo"].as_slice(),
        ),
        ("user", &users, ["admin", "demo"].as_slice()),
        ("role", &roles, ["admin", "user"].as_slice()),
    ]
    .iter()
    .flat_map(|(kind, have, want)| {
        want.iter()
            .filter(|w| !have.iter().any(|h| h == *w))
            .map(move |w| format!("{kind} {w}"))
    })
    .collect();
    if missing.is_empty() {
        Outcome::Pass(format!(
            "projects {}; users {}; roles {}",
            projects.join(" "),
            users.join(" "),
            roles.join(" ")
        ))
    } else {
        Outcome::Fail(format!("missing {}", missing.join(", ")))
    }
}

fn judge_image(out: &str) -> Outcome {
    let v = parse!(out);
    let image = v
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["Name"] == "kumo-boot");
    match image {
        Some(i) if i["Status"] == "active" => Outcome::Pass(format!(
            "kumo-boot active ({})",
            i["ID"].as_str().unwrap_or("?")
        )),
        Some(i) => Outcome::Fail(format!("kumo-boot is {}", i["Status"])),
        None => Outcome::Fail("kumo-boot is not in the image list".into()),
    }
}

fn judge_compute_services(out: &str) -> Outcome {
    let v = parse!(out);
    let services: Vec<(String, String, String)> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["Binary"].as_str().unwrap_or("").to_string(),
                s["Host"].as_str().unwrap_or("").to_string(),
                s["State"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let down: Vec<String> = services
        .iter()
        .filter(|s| s.2 != "up")
        .map(|s| format!("{} on {} is {}", s.0, s.1, s.2))
        .collect();
    let missing: Vec<&str> = ["nova-conductor", "nova-scheduler", "nova-compute"]
        .into_iter()
        .filter(|b| !services.iter().any(|s| s.0 == *b))
        .collect();
    if !missing.is_empty() {
        return Outcome::Fail(format!("no {}", missing.join(", ")));
    }
    if !down.is_empty() {
        return Outcome::Fail(down.join("; "));
    }
    Outcome::Pass(
        services
            .iter()
            .map(|s| format!("{}@{} up", s.0, s.1))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn judge_hypervisors(out: &str) -> Outcome {
    let v = parse!(out);
    let hs: Vec<&Value> = v.as_array().into_iter().flatten().collect();
    if hs.is_empty() {
        return Outcome::Fail("no hypervisor yet".into());
    }
    let down: Vec<String> = hs
        .iter()
        .filter(|h| h["State"] != "up")
        .map(|h| format!("{} is {}", h["Hypervisor Hostname"], h["State"]))
        .collect();
    if down.is_empty() {
        Outcome::Pass(
            hs.iter()
                .map(|h| {
                    format!(
                        "{} ({}) up",
                        h["Hypervisor Hostname"].as_str().unwrap_or("?"),
                        h["Hypervisor Type"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        )
    } else {
        Outcome::Fail(down.join("; "))
    }
}

fn judge_agents(out: &str) -> Outcome {
    let v = parse!(out);
    let agents: Vec<&Value> = v.as_array().into_iter().flatten().collect();
    let kinds: Vec<String> = names(&v, "Agent Type");
    let missing: Vec<&str> = [
        "L3 agent",
        "DHCP agent",
        "Metadata agent",
        "Linux bridge agent",
    ]
    .into_iter()
    .filter(|k| !kinds.iter().any(|have| have == k))
    .collect();
    if !missing.is_empty() {
        return Outcome::Fail(format!("no {}", missing.join(", ")));
    }
    let dead: Vec<String> = agents
        .iter()
        .filter(|a| a["Alive"] != Value::Bool(true) && a["Alive"] != ":-)")
        .map(|a| format!("{} on {} is not alive", a["Agent Type"], a["Host"]))
        .collect();
    if dead.is_empty() {
        Outcome::Pass(format!(
            "{} agents alive: {}",
            agents.len(),
            agents
                .iter()
                .map(|a| format!(
                    "{}@{}",
                    a["Agent Type"].as_str().unwrap_or("?"),
                    a["Host"].as_str().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        Outcome::Fail(dead.join("; "))
    }
}

fn judge_ext_net(out: &str) -> Outcome {
    let v = parse!(out);
    let external = v["router:external"] == Value::Bool(true) || v["router:external"] == "External";
    if v["status"] != "ACTIVE" || !external {
        return Outcome::Fail(format!(
            "ext-net status {} external {}",
            v["status"], v["router:external"]
        ));
    }
    Outcome::Pass(format!(
        "ext-net {} on {}",
        v["provider:network_type"].as_str().unwrap_or("?"),
        v["provider:physical_network"].as_str().unwrap_or("?")
    ))
}

fn judge_demo_net(out: &str) -> Outcome {
    let v = parse!(out);
    if v["status"] != "ACTIVE" {
        return Outcome::Fail(format!("demo-net is {}", v["status"]));
    }
    match v["mtu"].as_u64() {
        Some(1450) => Outcome::Pass(format!(
            "demo-net {} MTU 1450",
            v["provider:network_type"].as_str().unwrap_or("vxlan")
        )),
        other => Outcome::Fail(format!("demo-net MTU is {other:?}, not 1450")),
    }
}

/// The router's address on the external network, from `router show`.
pub fn router_gateway_ip(v: &Value) -> Option<String> {
    let info = &v["external_gateway_info"];
    // Older clients print it as a JSON string.
    let info = match info {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    };
    info["external_fixed_ips"]
        .as_array()?
        .iter()
        .find_map(|ip| ip["ip_address"].as_str().map(str::to_string))
}

fn judge_router(out: &str) -> Outcome {
    let v = parse!(out);
    match router_gateway_ip(&v) {
        Some(ip) if v["status"] == "ACTIVE" => {
            Outcome::Pass(format!("demo-router ACTIVE, gateway {ip}"))
        }
        Some(_) => Outcome::Fail(format!("demo-router is {}", v["status"])),
        None => Outcome::Fail("demo-router has no gateway on ext-net".into()),
    }
}

fn judge_ping(out: &str) -> Outcome {
    // `ping -c 3` summary: "3 packets transmitted, 3 received, 0% packet loss"
    let Some(line) = out.lines().find(|l| l.contains("packets transmitted")) else {
        return Outcome::Fail(format!("no ping summary{}", last_lines(out, 3)));
    };
    let received = line
        .split(',')
        .nth(1)
        .and_then(|p| p.trim().split(' ').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    let target = out
        .lines()
        .find_map(|l| l.strip_prefix("PING "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("?");
    if received > 0 {
        Outcome::Pass(format!("{target}: {}", line.trim()))
    } else {
        Outcome::Fail(format!("{target}: {}", line.trim()))
    }
}

fn judge_server(out: &str) -> Outcome {
    let v = parse!(out);
    let status = v["server"]["status"].as_str().unwrap_or("?");
    if status != "ACTIVE" {
        return Outcome::Fail(format!("kumo-test is {status}: {}", v["server"]["fault"]));
    }
    if v["console"].as_u64().unwrap_or(0) > 0 {
        Outcome::Pass(format!(
            "kumo-test ACTIVE; its console shows \"{BOOT_MESSAGE}\""
        ))
    } else {
        Outcome::Pass("kumo-test ACTIVE (no console output yet)".into())
    }
}

fn judge_volume(out: &str) -> Outcome {
    let v = parse!(out);
    let services = &v["services"];
    let up = |binary: &str| {
        services
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["Binary"] == binary && s["State"] == "up")
    };
    let status = v["status"].as_str().unwrap_or("?");
    if status == "available" {
        return Outcome::Pass("kumo-test-volume (1 GB) available".into());
    }
    let limit = v["limit"].as_str().unwrap_or("");
    if !limit.is_empty() && up("cinder-scheduler") {
        // Proven as far as these machines allow: the API took the request
        // and the scheduler is up, but no volume can be made here.
        return Outcome::Skip(format!(
            "{limit}; cinder-api answered and cinder-scheduler is up (volume {status})"
        ));
    }
    Outcome::Fail(format!(
        "kumo-test-volume is {status}; cinder-scheduler up: {}, cinder-volume up: {}",
        up("cinder-scheduler"),
        up("cinder-volume")
    ))
}

fn judge_horizon(out: &str) -> Outcome {
    let line = out.lines().last().unwrap_or("").trim();
    if line == "no login form" {
        return Outcome::Fail("the login page has no form".into());
    }
    // A successful login redirects away from the login page.
    match line.strip_prefix("login form; after login: ") {
        Some(rest) if rest.starts_with("302") && !rest.contains("/auth/login") => Outcome::Pass(
            format!("login page served; login redirected to {}", &rest[4..]),
        ),
        Some(rest) => Outcome::Fail(format!("login answered {rest}")),
        None => Outcome::Fail(format!("unexpected output{}", last_lines(out, 3))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_sector_is_one_bootable_sector_with_its_message() {
        let s = boot_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        // `mov si` points at the message, loaded at 0x7c00.
        let at = u16::from_le_bytes([s[5], s[6]]) as usize - 0x7c00;
        assert!(s[at..].starts_with(BOOT_MESSAGE.as_bytes()));
    }

    #[test]
    fn judges_read_the_clients_json() {
        assert!(matches!(
            judge_token(r#"{"id":"gAAA","project_id":"p","expires":"x"}"#),
            Outcome::Pass(_)
        ));
        assert!(matches!(judge_token("Unauthorized"), Outcome::Fail(_)));
        let services = r#"[{"Binary":"nova-conductor","Host":"a","State":"up"},
            {"Binary":"nova-scheduler","Host":"a","State":"up"},
            {"Binary":"nova-compute","Host":"b","State":"down"}]"#;
        assert_eq!(
            judge_compute_services(services),
            Outcome::Fail("nova-compute on b is down".into())
        );
        assert!(matches!(
            judge_compute_services(&services.replace("down", "up")),
            Outcome::Pass(_)
        ));
        let agents = r#"[{"Agent Type":"L3 agent","Host":"g","Alive":true},
            {"Agent Type":"DHCP agent","Host":"g","Alive":true},
            {"Agent Type":"Metadata agent","Host":"g","Alive":true},
            {"Agent Type":"Linux bridge agent","Host":"c","Alive":false}]"#;
        assert!(matches!(judge_agents(agents), Outcome::Fail(f) if f.contains("Linux bridge")));
        assert!(matches!(
            judge_demo_net(r#"{"status":"ACTIVE","mtu":1500}"#),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            judge_demo_net(r#"{"status":"ACTIVE","mtu":1450}"#),
            Outcome::Pass(_)
        ));
    }

    #[test]
    fn the_router_gateway_is_found_in_either_shape() {
        let v: Value = serde_json::from_str(
            r#"{"status":"ACTIVE","external_gateway_info":{"network_id":"n",
            "external_fixed_ips":[{"subnet_id":"s","ip_address":"203.0.113.150"}]}}"#,
        )
        .unwrap();
        assert_eq!(router_gateway_ip(&v).as_deref(), Some("203.0.113.150"));
        let s = serde_json::json!({"external_gateway_info":
            "{\"external_fixed_ips\": [{\"ip_address\": \"203.0.113.7\"}]}"});
        assert_eq!(router_gateway_ip(&s).as_deref(), Some("203.0.113.7"));
    }

    #[test]
    fn ping_and_volume_outcomes() {
        let ok = "PING 203.0.113.150 (203.0.113.150) 56(84) bytes of data.\n\
                  3 packets transmitted, 3 received, 0% packet loss, time 2003ms\n";
        assert!(matches!(judge_ping(ok), Outcome::Pass(p) if p.starts_with("203.0.113.150")));
        assert!(matches!(
            judge_ping(&ok.replace("3 received", "0 received")),
            Outcome::Fail(_)
        ));
        let limited = r#"{"services":[{"Binary":"cinder-scheduler","State":"up"}],
            "limit":"volumes unavailable: no device-mapper","status":"error"}"#;
        assert!(matches!(judge_volume(limited), Outcome::Skip(_)));
        let unlimited = limited.replace("volumes unavailable: no device-mapper", "");
        assert!(matches!(judge_volume(&unlimited), Outcome::Fail(_)));
    }

    #[test]
    fn a_login_must_leave_the_login_page() {
        assert!(matches!(
            judge_horizon("login form; after login: 302 http://x/horizon/"),
            Outcome::Pass(_)
        ));
        assert!(matches!(
            judge_horizon("login form; after login: 200 "),
            Outcome::Fail(_)
        ));
    }
}

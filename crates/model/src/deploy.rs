//! Deploying an operating system: the images machines receive, the users'
//! SSH keys, a machine's deployment in progress, and the cloud-init
//! documents its first boot reads. All pure: the region stores and serves
//! these, the agent and the rack act on them.

use std::net::Ipv4Addr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::{MacAddress, Millis};

/// An OS image the region holds and racks serve: a compressed raw disk
/// (`<sha256>.img.zst`) that the ephemeral environment streams onto a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub os: String,
    pub release: String,
    pub arch: String,
    /// Of the compressed file, as it travels; machines check it.
    pub sha256: String,
    pub size: u64,
    /// Of the disk the file unpacks to.
    pub raw_size: u64,
    #[serde(default)]
    pub raw_sha256: String,
    pub created_at: Millis,
}

impl Image {
    /// Where racks serve the file, below their HTTP root.
    pub fn rack_path(&self) -> String {
        image_rack_path(&self.sha256)
    }
}

pub fn image_rack_path(sha256: &str) -> String {
    format!("/boot/images/{}", image_file_name(sha256))
}

/// The file an image is kept in, by region and racks alike.
pub fn image_file_name(sha256: &str) -> String {
    format!("{sha256}.img.zst")
}

/// Image names become file and URL parts: keep them plain.
pub fn check_image_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ModelError::field(
            "image name",
            name,
            "use 1–64 letters, digits, '-', '_' or '.', not starting with '.'",
        ))
    }
}

/// A SHA-256 in lowercase hex, as image checksums are given.
pub fn check_sha256(hex: &str) -> Result<(), ModelError> {
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ModelError::field(
            "sha256",
            hex,
            "expected 64 lowercase hex digits",
        ))
    }
}

/// A user's SSH public key, in OpenSSH's one-line form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKey {
    /// OpenSSH's fingerprint, `SHA256:<base64>`: what `ssh-keygen -l` shows.
    pub fingerprint: String,
    pub key_type: String,
    /// The whole line, normalised to `type base64 [comment]`.
    pub key: String,
    pub comment: String,
    #[serde(default)]
    pub created_at: Millis,
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl SshKey {
    /// Parses `type base64 [comment]`. The blob must decode and name the
    /// same type inside, which catches truncated or mangled pastes.
    pub fn parse(line: &str, now: Millis) -> Result<SshKey, ModelError> {
        let bad = |reason: &str| {
            ModelError::field("ssh key", line.chars().take(40).collect::<String>(), reason)
        };
        let mut parts = line.split_whitespace();
        let key_type = parts.next().ok_or_else(|| bad("empty"))?;
        if !KEY_TYPES.contains(&key_type) {
            return Err(bad(&format!(
                "unknown key type {key_type:?}; expected one of {}",
                KEY_TYPES.join(", ")
            )));
        }
        let b64 = parts
            .next()
            .ok_or_else(|| bad("no key data after the type"))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(&format!("key data is not base64: {e}")))?;
        // The blob starts with a length-prefixed copy of the type.
        let inner = blob
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .and_then(|n| blob.get(4..4 + n))
            .ok_or_else(|| bad("key data is truncated"))?;
        if inner != key_type.as_bytes() {
            return Err(bad("key data does not match its type"));
        }
        let comment = parts.collect::<Vec<_>>().join(" ");
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
        );
        let key = if comment.is_empty() {
            format!("{key_type} {b64}")
        } else {
            format!("{key_type} {b64} {comment}")
        };
        Ok(SshKey {
            fingerprint,
            key_type: key_type.to_owned(),
            key,
            comment,
            created_at: now,
        })
    }
}

/// Where a deployment is: the ephemeral environment writing the image, or
/// the written disk booting (the rack then points the machine at its disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeployStage {
    #[default]
    Installing,
    Installed,
}

/// A machine's current (or last) deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub image: String,
    pub image_sha256: String,
    pub stage: DeployStage,
    /// The user's own cloud-init user-data, passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    pub started_at: Millis,
}

/// What the ephemeral environment needs to write a machine's disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployInstructions {
    pub image: String,
    /// Path on the rack's HTTP server.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub raw_size: u64,
}

/// One interface's static configuration, for the first boot's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticInterface {
    pub mac: MacAddress,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
}

/// cloud-init's NoCloud `meta-data`. JSON is YAML, so cloud-init reads it.
pub fn cloud_init_meta_data(system_id: &str, hostname: &str) -> String {
    json!({"instance-id": system_id, "local-hostname": hostname}).to_string()
}

/// cloud-init network config version 2. Interfaces are matched by MAC and
/// named `eth0`, `eth1`… so the first boot needs no knowledge of how the
/// OS names NICs; NICs without a static address use DHCP.
pub fn cloud_init_network_config(macs: &[MacAddress], statics: &[StaticInterface]) -> String {
    let mut ethernets = serde_json::Map::new();
    for (i, mac) in macs.iter().enumerate() {
        let name = format!("eth{i}");
        let mut eth = json!({
            "match": {"macaddress": mac.to_string()},
            "set-name": name,
        });
        match statics.iter().find(|s| s.mac == *mac) {
            Some(s) => {
                eth["addresses"] = json!([format!("{}/{}", s.address, s.prefix_len)]);
                if let Some(gw) = s.gateway {
                    eth["gateway4"] = json!(gw.to_string());
                }
                if !s.dns_servers.is_empty() || !s.search.is_empty() {
                    eth["nameservers"] = json!({
                        "addresses": s.dns_servers.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        "search": s.search,
                    });
                }
            }
            // Only the first NIC asks for DHCP: an unplugged second NIC
            // must not hold up the boot waiting for a lease.
            None if i == 0 => eth["dhcp4"] = json!(true),
            None => continue,
        }
        ethernets.insert(name, eth);
    }
    json!({"version": 2, "ethernets": ethernets}).to_string()
}

/// What kumo asks of the first boot, as cloud-init vendor-data (the user's
/// own user-data comes after it and wins): the FQDN, the owner's SSH keys,
/// the rack's package proxy, and a last step that tells the region the
/// machine is up, which makes it Deployed.
pub struct VendorData<'a> {
    pub hostname: &'a str,
    pub fqdn: &'a str,
    pub ssh_keys: &'a [String],
    pub apt_proxy: Option<&'a str>,
    /// The metadata URL the machine reports to (the rack's proxy).
    pub metadata_url: &'a str,
    pub token: &'a str,
}

pub fn cloud_init_vendor_data(v: &VendorData<'_>) -> String {
    let status = format!("{}/status", v.metadata_url.trim_end_matches('/'));
    let body = r#"{"event":"finished","result":"success","message":"first boot finished"}"#;
    // The token goes in a root-only file rather than on a command line
    // that `ps` would show.
    let report = format!(
        "curl -fsS --retry 10 --retry-connrefused -H \"Authorization: Bearer $(cat /etc/kumo/token)\" \
         -H 'Content-Type: application/json' -d '{body}' {status}"
    );
    let mut doc = json!({
        "hostname": v.hostname,
        "fqdn": v.fqdn,
        "prefer_fqdn_over_hostname": false,
        "manage_etc_hosts": true,
        "ssh_authorized_keys": v.ssh_keys,
        "ssh_pwauth": false,
        "write_files": [
            {"path": "/etc/kumo/token", "permissions": "0600", "content": v.token},
        ],
        "runcmd": [["sh", "-c", report]],
    });
    if let Some(proxy) = v.apt_proxy {
        doc["apt"] = json!({"proxy": proxy, "http_proxy": proxy});
    }
    format!("#cloud-config\n{doc}\n")
}

/// What a machine's disk, image and first boot do with `user_data` when
/// the user gave none: nothing.
pub fn cloud_init_user_data(user_data: Option<&str>) -> String {
    match user_data {
        Some(u) => u.to_owned(),
        None => "#cloud-config\n{}\n".to_owned(),
    }
}

/// The JSON inside a rendered cloud-config document.
pub fn parse_rendered(doc: &str) -> Value {
    let body = doc.strip_prefix("#cloud-config\n").unwrap_or(doc);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real key made by `ssh-keygen -t ed25519 -C alice@lab`.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPUYHB3P4QFb+8f1A5+RYSsWcGhfpdub+t893nu4Vr/R alice@lab";

    #[test]
    fn ssh_key_parses_with_openssh_fingerprint() {
        let k = SshKey::parse(ED25519, 5).unwrap();
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(k.comment, "alice@lab");
        // What `ssh-keygen -lf` printed for this key.
        assert_eq!(
            k.fingerprint,
            "SHA256:XRcpt+iMenwlYgw9QArqsx8a4+sQK6XCjvbBvKEMUa4"
        );
        assert_eq!(k.key, ED25519);
    }

    #[test]
    fn bad_ssh_keys_say_why() {
        for (line, why) in [
            ("", "empty"),
            ("ssh-dss AAAA", "unknown key type"),
            ("ssh-ed25519", "no key data"),
            ("ssh-ed25519 !!!", "not base64"),
            ("ssh-ed25519 AAAA", "truncated"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIPUYHB3P4QFb+8f1A5+RYSsWcGhfpdub+t893nu4Vr/R",
                "does not match",
            ),
        ] {
            let e = SshKey::parse(line, 0).unwrap_err().to_string();
            assert!(e.contains(why), "{line:?}: {e}");
        }
    }

    #[test]
    fn image_names_and_checksums_are_checked() {
        assert!(check_image_name("debian-12").is_ok());
        assert!(check_image_name("../x").is_err());
        assert!(check_image_name(".hidden").is_err());
        assert!(check_image_name("").is_err());
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256("abc").is_err());
    }

    #[test]
    fn network_config_matches_by_mac_with_static_address() {
        let m0: MacAddress = "52:54:00:00:00:01".parse().unwrap();
        let m1: MacAddress = "52:54:00:00:00:02".parse().unwrap();
        let doc = cloud_init_network_config(
            &[m0, m1],
            &[StaticInterface {
                mac: m0,
                address: Ipv4Addr::new(10, 0, 0, 10),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dns_servers: vec![Ipv4Addr::new(10, 0, 0, 2)],
                search: vec!["lab.kumo".into()],
            }],
        );
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["version"], 2);
        let eth0 = &v["ethernets"]["eth0"];
        assert_eq!(eth0["match"]["macaddress"], "52:54:00:00:00:01");
        assert_eq!(eth0["addresses"][0], "10.0.0.10/24");
        assert_eq!(eth0["gateway4"], "10.0.0.1");
        assert_eq!(eth0["nameservers"]["search"][0], "lab.kumo");
        assert!(
            v["ethernets"].get("eth1").is_none(),
            "a second NIC without an address is left alone"
        );
    }

    #[test]
    fn vendor_data_carries_keys_token_and_the_report() {
        let keys = vec![ED25519.to_owned()];
        let doc = cloud_init_vendor_data(&VendorData {
            hostname: "node1",
            fqdn: "node1.lab.kumo",
            ssh_keys: &keys,
            apt_proxy: Some("http://10.0.0.2:8000/"),
            metadata_url: "http://10.0.0.2:5248/metadata/v1/",
            token: "t0k",
        });
        assert!(doc.starts_with("#cloud-config\n"));
        let v = parse_rendered(&doc);
        assert_eq!(v["ssh_authorized_keys"][0], ED25519);
        assert_eq!(v["write_files"][0]["content"], "t0k");
        assert_eq!(v["apt"]["proxy"], "http://10.0.0.2:8000/");
        let cmd = v["runcmd"][0][2].as_str().unwrap();
        assert!(
            cmd.contains("http://10.0.0.2:5248/metadata/v1/status"),
            "{cmd}"
        );
        assert!(!cmd.contains("t0k"), "the token stays off the command line");
    }
}

//! Deploying: OS images (stored as files beside the database, described in
//! it), users' SSH keys, and what a deploying machine asks for — where its
//! image is, its cloud-init documents, and "the image is on my disk, boot
//! me from it".

use std::path::{Path, PathBuf};

use kumo_model::api::{CloudInitDocuments, ImageUpload, InstalledReply};
use kumo_model::deploy::{
    self, DeployInstructions, DeployStage, Deployment, Image, SshKey, StaticInterface, VendorData,
};
use kumo_model::lifecycle::MachineStatus;
use kumo_model::network::LinkRequest;
use kumo_model::Machine;
use kumo_store::{MachineQuery, NewEvent, NewPowerJob, StaticIp};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::{Actor, Region, RegionError};

/// The image `kumo machines deploy` uses when none is named.
pub const DEFAULT_IMAGE: &str = "debian-12";

impl Region {
    fn images_dir(&self) -> Result<&Path, RegionError> {
        self.inner.config.images_dir.as_deref().ok_or_else(|| {
            RegionError::invalid(
                "images",
                "this region has no image directory (start it with a data directory)",
            )
        })
    }

    pub async fn images(&self) -> Result<Vec<Image>, RegionError> {
        Ok(self.store().list_images().await?)
    }

    pub async fn image(&self, name: &str) -> Result<Image, RegionError> {
        Ok(self.store().get_image(name).await?)
    }

    /// The image and the file holding it.
    pub async fn image_file(&self, name: &str) -> Result<(Image, PathBuf), RegionError> {
        let image = self.image(name).await?;
        let path = self
            .images_dir()?
            .join(deploy::image_file_name(&image.sha256));
        Ok((image, path))
    }

    /// Stores an uploaded image. The body is written to a temporary file
    /// while it is hashed; only a body of the announced size and checksum
    /// becomes the image, so a cut or corrupted upload replaces nothing.
    pub async fn upload_image<R: AsyncRead + Unpin>(
        &self,
        actor: &Actor,
        meta: ImageUpload,
        mut body: R,
    ) -> Result<Image, RegionError> {
        Self::require_admin(actor, "uploading an image")?;
        deploy::check_image_name(&meta.name)?;
        deploy::check_sha256(&meta.sha256)?;
        let dir = self.images_dir()?.to_owned();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
        let part = dir.join(format!(".{}.{}.part", meta.name, std::process::id()));
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| io_error(format!("creating {}", part.display()), e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let result = async {
            loop {
                let n = body
                    .read(&mut buf)
                    .await
                    .map_err(|e| io_error(format!("receiving image {}", meta.name), e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                file.write_all(&buf[..n])
                    .await
                    .map_err(|e| io_error(format!("writing {}", part.display()), e))?;
            }
            file.sync_all()
                .await
                .map_err(|e| io_error(format!("syncing {}", part.display()), e))?;
            let got = hex::encode(hasher.finalize());
            if got != meta.sha256 {
                return Err(RegionError::invalid(
                    "sha256",
                    format!(
                        "image {} arrived with sha256 {got} ({size} bytes), not the announced {}",
                        meta.name, meta.sha256
                    ),
                ));
            }
            let final_path = dir.join(deploy::image_file_name(&meta.sha256));
            tokio::fs::rename(&part, &final_path)
                .await
                .map_err(|e| io_error(format!("renaming {}", part.display()), e))?;
            Ok(size)
        }
        .await;
        let size = match result {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        let image = Image {
            name: meta.name.clone(),
            os: meta.os,
            release: meta.release,
            arch: meta.arch,
            sha256: meta.sha256,
            size,
            raw_size: meta.raw_size,
            raw_sha256: meta.raw_sha256,
            created_at: self.now(),
        };
        let replaced = self.store().get_image(&image.name).await.ok();
        self.store().put_image(&image).await?;
        if let Some(old) = replaced.filter(|o| o.sha256 != image.sha256) {
            self.remove_unused_image_file(&old.sha256).await;
        }
        self.record_audit(
            actor,
            "upload-image",
            format!("image/{}", image.name),
            format!("{} ({} bytes)", image.sha256, image.size),
        )
        .await?;
        self.changed();
        Ok(image)
    }

    /// Deletes an image; one a machine is being deployed with stays.
    pub async fn delete_image(&self, actor: &Actor, name: &str) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting an image")?;
        let image = self.image(name).await?;
        let deploying = self
            .store()
            .list_machines(&MachineQuery {
                statuses: vec![MachineStatus::Deploying],
                ..Default::default()
            })
            .await?
            .into_iter()
            .filter(|m| m.deployment.as_ref().is_some_and(|d| d.image == name))
            .count();
        if deploying > 0 {
            return Err(RegionError::InUse {
                what: "image",
                id: name.to_owned(),
                count: deploying as i64,
            });
        }
        self.store().delete_image(name).await?;
        self.remove_unused_image_file(&image.sha256).await;
        self.record_audit(actor, "delete-image", format!("image/{name}"), "")
            .await?;
        self.changed();
        Ok(())
    }

    /// Two names may hold the same bytes; the file goes with the last.
    async fn remove_unused_image_file(&self, sha256: &str) {
        let still_used = match self.images().await {
            Ok(all) => all.iter().any(|i| i.sha256 == sha256),
            Err(_) => true,
        };
        if let (false, Ok(dir)) = (still_used, self.images_dir()) {
            let _ = tokio::fs::remove_file(dir.join(deploy::image_file_name(sha256))).await;
        }
    }

    // ---- SSH keys -------------------------------------------------------

    pub async fn ssh_keys(&self, actor: &Actor) -> Result<Vec<SshKey>, RegionError> {
        Ok(self.store().ssh_keys(&actor.username).await?)
    }

    pub async fn add_ssh_key(&self, actor: &Actor, line: &str) -> Result<SshKey, RegionError> {
        let key = SshKey::parse(line.trim(), self.now())?;
        self.store().add_ssh_key(&actor.username, &key).await?;
        self.record_audit(
            actor,
            "add-ssh-key",
            format!("user/{}", actor.username),
            key.fingerprint.clone(),
        )
        .await?;
        Ok(key)
    }

    pub async fn delete_ssh_key(
        &self,
        actor: &Actor,
        fingerprint: &str,
    ) -> Result<(), RegionError> {
        self.store()
            .delete_ssh_key(&actor.username, fingerprint)
            .await?;
        self.record_audit(
            actor,
            "delete-ssh-key",
            format!("user/{}", actor.username),
            fingerprint,
        )
        .await
    }

    // ---- deploying ------------------------------------------------------

    /// Checks what a deploy needs before anything moves: the image exists
    /// and, on an unambiguous network, the boot interface has an address.
    pub(crate) async fn plan_deployment(
        &self,
        m: &Machine,
        image: Option<&str>,
        user_data: Option<String>,
    ) -> Result<Deployment, RegionError> {
        let image = match image {
            Some(name) => self.image(name).await.map_err(|e| match e {
                RegionError::NotFound { .. } => RegionError::invalid(
                    "image",
                    format!("no image {name:?}; `kumo images list` shows the images"),
                ),
                other => other,
            })?,
            None => self.default_image().await?,
        };
        self.ensure_boot_address(m).await?;
        Ok(Deployment {
            image: image.name,
            image_sha256: image.sha256,
            stage: DeployStage::Installing,
            user_data,
            started_at: self.now(),
        })
    }

    async fn default_image(&self) -> Result<Image, RegionError> {
        let all = self.images().await?;
        if let Some(i) = all.iter().find(|i| i.name == DEFAULT_IMAGE) {
            return Ok(i.clone());
        }
        match all.len() {
            1 => Ok(all.into_iter().next().expect("one image")),
            0 => Err(RegionError::invalid(
                "image",
                "the region has no images; build one with `kumo images build`",
            )),
            _ => Err(RegionError::invalid(
                "image",
                format!(
                    "no image {DEFAULT_IMAGE:?} and several others; name one of: {}",
                    all.iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// A machine whose first NIC has no static address gets one when there
    /// is exactly one managed subnet to take it from, as MAAS's "auto
    /// assign" does; anything less clear is left to `kumo machines link`
    /// (and the first boot falls back to DHCP).
    async fn ensure_boot_address(&self, m: &Machine) -> Result<(), RegionError> {
        let Some(mac) = m.macs.first() else {
            return Ok(());
        };
        let held = self
            .store()
            .machine_static_ips(m.system_id.as_str())
            .await?;
        if held.iter().any(|i| i.mac == mac.to_string()) {
            return Ok(());
        }
        let managed: Vec<_> = self
            .subnets()
            .await?
            .into_iter()
            .filter(|s| s.managed)
            .collect();
        if let [subnet] = managed.as_slice() {
            let sip = self
                .link_machine(
                    &Actor::system(),
                    m.system_id.as_str(),
                    LinkRequest {
                        mac: mac.to_string(),
                        subnet: subnet.cidr.to_string(),
                        ip: None,
                    },
                )
                .await?;
            self.store()
                .add_machine_event(
                    m.system_id.as_str(),
                    self.now(),
                    &NewEvent {
                        kind: "network",
                        message: format!("assigned {} on {} to {mac}", sip.ip, sip.subnet),
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Where the machine's image is, for the ephemeral environment.
    pub(crate) async fn deploy_instructions(
        &self,
        m: &Machine,
    ) -> Result<Option<DeployInstructions>, RegionError> {
        let Some(d) = m
            .deployment
            .as_ref()
            .filter(|_| m.status == MachineStatus::Deploying)
        else {
            return Ok(None);
        };
        let image = self.image(&d.image).await?;
        if image.sha256 != d.image_sha256 {
            return Err(RegionError::invalid(
                "image",
                format!(
                    "image {} was replaced while machine {} was deploying it; deploy again",
                    d.image, m.system_id
                ),
            ));
        }
        Ok(Some(DeployInstructions {
            path: image.rack_path(),
            image: image.name,
            sha256: image.sha256,
            size: image.size,
            raw_size: image.raw_size,
        }))
    }

    /// The NoCloud seed the ephemeral environment writes onto the deployed
    /// disk. `metadata_url` is how the machine reaches kumo (its rack).
    pub async fn cloud_init(
        &self,
        token: &str,
        metadata_url: &str,
    ) -> Result<CloudInitDocuments, RegionError> {
        let m = self.machine_for_token(token).await?;
        let d = m.deployment.clone().ok_or_else(|| {
            RegionError::invalid(
                "machine",
                format!("machine {} has no deployment", m.system_id),
            )
        })?;
        let mut statics = self.static_interfaces(&m).await?;
        // A subnet without DNS servers is served by its rack, as DHCP does:
        // the rack is the host the machine reaches kumo by.
        if let Some(rack) = url_host_ipv4(metadata_url) {
            for s in statics.iter_mut().filter(|s| s.dns_servers.is_empty()) {
                s.dns_servers.push(rack);
            }
        }
        let domain = statics
            .first()
            .and_then(|s| s.search.first().cloned())
            .unwrap_or_default();
        let fqdn = if domain.is_empty() {
            m.hostname.to_string()
        } else {
            format!("{}.{domain}", m.hostname)
        };
        let mut keys = Vec::new();
        if let Some(owner) = &m.owner {
            keys = self
                .store()
                .ssh_keys(owner)
                .await?
                .into_iter()
                .map(|k| k.key)
                .collect();
        }
        Ok(CloudInitDocuments {
            meta_data: deploy::cloud_init_meta_data(m.system_id.as_str(), m.hostname.as_str()),
            network_config: deploy::cloud_init_network_config(&m.macs, &statics),
            vendor_data: deploy::cloud_init_vendor_data(&VendorData {
                hostname: m.hostname.as_str(),
                fqdn: &fqdn,
                ssh_keys: &keys,
                apt_proxy: self.inner.config.package_proxy.as_deref(),
                metadata_url,
                token,
            }),
            user_data: deploy::cloud_init_user_data(d.user_data.as_deref()),
        })
    }

    async fn static_interfaces(&self, m: &Machine) -> Result<Vec<StaticInterface>, RegionError> {
        let held: Vec<StaticIp> = self
            .store()
            .machine_static_ips(m.system_id.as_str())
            .await?;
        let subnets = self.subnets().await?;
        let mut out = Vec::new();
        for ip in held {
            let (Ok(mac), Ok(address)) = (ip.mac.parse(), ip.ip.parse()) else {
                continue;
            };
            let Some(s) = subnets.iter().find(|s| s.cidr.to_string() == ip.subnet) else {
                continue;
            };
            out.push(StaticInterface {
                mac,
                address,
                prefix_len: s.cidr.prefix(),
                gateway: s.gateway,
                dns_servers: s.dns_servers.clone(),
                search: s.domain.iter().cloned().collect(),
            });
        }
        // The boot NIC first, so its domain names the machine.
        out.sort_by_key(|s| m.macs.iter().position(|x| *x == s.mac));
        Ok(out)
    }

    /// Records what a rack saw of a machine's boot.
    pub async fn record_boot_event(
        &self,
        actor: &Actor,
        system_id: &str,
        message: &str,
    ) -> Result<(), RegionError> {
        Self::require_admin(actor, "recording boot events")?;
        let m = self.machine(system_id).await?;
        self.store()
            .add_machine_event(
                m.system_id.as_str(),
                self.now(),
                &NewEvent {
                    kind: "boot",
                    message: message.chars().take(200).collect(),
                },
            )
            .await?;
        Ok(())
    }

    /// The image is on the machine's disk: from now on the rack boots it
    /// from that disk, and the power driver restarts it (a machine with
    /// manual power restarts itself).
    pub async fn machine_installed(&self, token: &str) -> Result<InstalledReply, RegionError> {
        let m = self.machine_for_token(token).await?;
        if m.status != MachineStatus::Deploying {
            return Err(RegionError::invalid(
                "status",
                format!("machine {} is {}, not deploying", m.system_id, m.status),
            ));
        }
        let by_power = m.power_type != "manual";
        let sid = m.system_id.to_string();
        self.write_machine(&sid, |m, w, _| {
            if let Some(d) = m.deployment.as_mut() {
                d.stage = DeployStage::Installed;
            }
            m.status_message = "rebooting from local disk".into();
            if let Some(t) = self.timeout_ms(m.status) {
                m.deadline = Some(w.now + t);
            }
            w.events.push(NewEvent {
                kind: "progress",
                message: "image written; rebooting from local disk".into(),
            });
            if by_power {
                w.jobs.push(NewPowerJob {
                    op: "cycle".into(),
                    complete_status: None,
                });
            }
            Ok(())
        })
        .await?;
        if by_power {
            self.inner.power_wakeup.notify_one();
        }
        Ok(InstalledReply {
            reboot: if by_power { "power" } else { "self" }.into(),
        })
    }
}

/// `http://10.0.0.2:5248/x` → 10.0.0.2.
fn url_host_ipv4(url: &str) -> Option<std::net::Ipv4Addr> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    authority.split(':').next()?.parse().ok()
}

fn io_error(what: String, e: std::io::Error) -> RegionError {
    RegionError::Internal(format!("{what}: {e}"))
}

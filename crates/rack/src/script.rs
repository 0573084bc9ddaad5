//! iPXE scripts: the generic one DHCP hands every iPXE client, which
//! chains to a script for the booting MAC, rendered from the machine's
//! boot purpose. Pure: templates in, text out.

use minijinja::{context, Environment};
use serde::Serialize;

use kumo_model::boot::BootPurpose;

use crate::Error;

/// Where the ephemeral environment's kernel and initramfs live below the
/// HTTP server's `/boot/`, per architecture.
pub const EPHEMERAL_DIR: &str = "ephemeral";

const GENERIC: &str = r#"#!ipxe
# kumo rack {{ rack }}: fetch the script for this interface's MAC.
:retry
chain --autofree http://{{ host }}/ipxe/mac/${mac:hexhyp} || goto failed
:failed
echo kumo: no boot script from {{ host }}; retrying in 10 seconds
sleep 10
goto retry
"#;

const EPHEMERAL: &str = r#"#!ipxe
# kumo rack {{ rack }}: {{ name }} ({{ mac }}) boots to {{ purpose }}.
echo kumo: {{ name }} boots the ephemeral environment to {{ purpose }}
kernel http://{{ host }}/boot/{{ dir }}/{{ arch }}/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200n8 BOOTIF=01-${mac:hexhyp} kumo.purpose={{ purpose }} kumo.metadata_url=http://{{ host }}/metadata/v1/{% if system_id %} kumo.system_id={{ system_id }}{% endif %}{% if token %} kumo.token={{ token }}{% endif %} || goto failed
initrd http://{{ host }}/boot/{{ dir }}/{{ arch }}/initrd.img || goto failed
boot || goto failed
:failed
echo kumo: booting the ephemeral environment failed; retrying in 30 seconds
sleep 30
chain --autofree http://{{ host }}/ipxe/mac/${mac:hexhyp}
"#;

const LOCAL_DISK: &str = r#"#!ipxe
# kumo rack {{ rack }}: {{ name }} ({{ mac }}) boots from its local disk.
echo kumo: {{ name }} boots from its local disk
iseq ${platform} efi && exit ||
sanboot --no-describe --drive 0x80 || exit
"#;

const POWER_OFF: &str = r#"#!ipxe
# kumo rack {{ rack }}: {{ name }} ({{ mac }}) has nothing to boot; it powers off.
echo kumo: {{ name }} is {{ status_hint }}; powering off
poweroff || exit
"#;

/// What a per-MAC script is rendered from.
#[derive(Clone, Debug, Serialize)]
pub struct ScriptInput<'a> {
    pub rack: &'a str,
    /// `host[:port]` of the HTTP boot server, as the client reached it.
    pub host: &'a str,
    /// The MAC, lower-case and colon-separated.
    pub mac: &'a str,
    /// The machine's host name; `None` for an unknown MAC.
    pub hostname: Option<&'a str>,
    pub system_id: Option<&'a str>,
    pub purpose: BootPurpose,
    pub arch: &'a str,
    /// The machine's token for the metadata API, for a known machine's
    /// ephemeral boot.
    pub token: Option<&'a str>,
}

/// Renders iPXE scripts from the built-in templates.
pub struct Scripts {
    env: Environment<'static>,
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

impl Scripts {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, text) in [
            ("generic", GENERIC),
            ("ephemeral", EPHEMERAL),
            ("local-disk", LOCAL_DISK),
            ("poweroff", POWER_OFF),
        ] {
            env.add_template(name, text)
                .expect("built-in templates are valid");
        }
        Scripts { env }
    }

    /// The script DHCP points every iPXE client at.
    pub fn generic(&self, rack: &str, host: &str) -> Result<String, Error> {
        self.render("generic", context! { rack, host })
    }

    /// The script for one MAC.
    pub fn for_mac(&self, input: &ScriptInput<'_>) -> Result<String, Error> {
        let name = input.hostname.unwrap_or("an unknown machine");
        let template = match input.purpose {
            BootPurpose::LocalDisk => "local-disk",
            BootPurpose::PowerOff => "poweroff",
            _ => "ephemeral",
        };
        self.render(
            template,
            context! {
                rack => input.rack,
                host => input.host,
                mac => input.mac,
                name,
                system_id => input.system_id,
                token => input.token,
                purpose => input.purpose.name(),
                arch => input.arch,
                dir => EPHEMERAL_DIR,
                status_hint => "idle",
            },
        )
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, Error> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::Plan(format!("ipxe template {name}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(purpose: BootPurpose, known: bool) -> ScriptInput<'static> {
        ScriptInput {
            rack: "rack1",
            host: "10.20.0.2:5248",
            mac: "52:54:00:00:00:0a",
            hostname: known.then_some("node1"),
            system_id: known.then_some("abc123"),
            purpose,
            arch: "amd64",
            token: None,
        }
    }

    #[test]
    fn generic_script_chains_by_mac() {
        insta::assert_snapshot!(Scripts::new().generic("rack1", "10.20.0.2:5248").unwrap());
    }

    #[test]
    fn unknown_machine_enlists() {
        insta::assert_snapshot!(Scripts::new()
            .for_mac(&input(BootPurpose::Enlist, false))
            .unwrap());
    }

    #[test]
    fn known_machine_commissions_with_its_system_id() {
        let s = Scripts::new()
            .for_mac(&input(BootPurpose::Commission, true))
            .unwrap();
        assert!(s.contains("kumo.purpose=commission"), "{s}");
        assert!(s.contains("kumo.system_id=abc123"), "{s}");
        insta::assert_snapshot!(s);
    }

    #[test]
    fn a_known_machine_s_token_goes_on_the_kernel_command_line() {
        let mut i = input(BootPurpose::Commission, true);
        i.token = Some("tok-123_x");
        let s = Scripts::new().for_mac(&i).unwrap();
        assert!(
            s.contains(" kumo.system_id=abc123 kumo.token=tok-123_x "),
            "{s}"
        );
    }

    #[test]
    fn deployed_machine_boots_its_disk() {
        insta::assert_snapshot!(Scripts::new()
            .for_mac(&input(BootPurpose::LocalDisk, true))
            .unwrap());
    }

    #[test]
    fn idle_machine_powers_off() {
        let s = Scripts::new()
            .for_mac(&input(BootPurpose::PowerOff, true))
            .unwrap();
        assert!(s.contains("poweroff"), "{s}");
    }

    #[test]
    fn every_script_starts_with_the_ipxe_magic() {
        let scripts = Scripts::new();
        for p in [
            BootPurpose::Enlist,
            BootPurpose::Commission,
            BootPurpose::Test,
            BootPurpose::Deploy,
            BootPurpose::Erase,
            BootPurpose::Rescue,
            BootPurpose::LocalDisk,
            BootPurpose::PowerOff,
        ] {
            let s = scripts.for_mac(&input(p, true)).unwrap();
            assert!(s.starts_with("#!ipxe\n"), "{p}: {s}");
        }
    }
}

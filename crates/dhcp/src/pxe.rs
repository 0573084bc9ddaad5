//! Which boot file a network-booting client gets.

use dhcproto::v4::{DhcpOption, DhcpOptions, OptionCode};

use crate::BootConfig;

/// The boot answer for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootChoice {
    pub file: String,
    /// The client said "PXEClient" in option 60; PXE ROMs want it echoed.
    pub echo_pxe_class: bool,
}

/// RFC 4578 client architecture types we have a file for.
const ARCH_BIOS: u16 = 0;
const ARCH_EFI_BC: u16 = 7;
const ARCH_EFI_X86_64: u16 = 9;

/// iPXE (user class "iPXE") gets the HTTP script so it chainloads it
/// instead of downloading itself again; PXE firmware gets the iPXE binary
/// for its architecture. Clients that are not booting get nothing.
pub(crate) fn choose(boot: &BootConfig, opts: &DhcpOptions) -> Option<BootChoice> {
    let pxe_class = matches!(
        opts.get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient")
    );
    let ipxe = matches!(
        opts.get(OptionCode::UserClass),
        Some(DhcpOption::UserClass(u)) if u.windows(4).any(|w| w == b"iPXE")
    );
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => None,
    };
    let file = if ipxe {
        boot.ipxe_script_url.clone()
    } else {
        match arch {
            Some(ARCH_BIOS) => boot.bios_file.clone(),
            Some(ARCH_EFI_BC | ARCH_EFI_X86_64) => boot.uefi_file.clone(),
            // Unsupported architecture (arm64, ia32 UEFI, ...): no file rather than a wrong one.
            Some(_) => return None,
            // Old PXE ROMs omit option 93; they are BIOS.
            None if pxe_class => boot.bios_file.clone(),
            None => return None,
        }
    };
    Some(BootChoice {
        file,
        echo_pxe_class: pxe_class,
    })
}

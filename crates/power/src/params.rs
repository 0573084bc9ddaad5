//! Parameter specs per power type, validation, and typed access for drivers.

use serde_json::{Map, Value};

use crate::PowerError;

/// What values a parameter accepts. Numbers and booleans may also arrive as
/// strings (MAAS stores every power parameter as a string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Text,
    /// An integer 1..=65535.
    Port,
    Bool,
    /// A MAC address, `aa:bb:cc:dd:ee:ff` (or `-` separated).
    Mac,
    /// An IPv4 address.
    Ipv4,
    /// An http(s) URL.
    Url,
    /// A regular expression.
    Regex,
    /// One of the listed words.
    Choice(&'static [&'static str]),
    /// A JSON array of strings, or a string holding one.
    Argv,
}

/// One parameter a power type accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParameterSpec {
    pub name: &'static str,
    pub required: bool,
    /// Secrets are encrypted at rest by the region and never returned.
    pub secret: bool,
    pub description: &'static str,
    pub kind: ParamKind,
    /// The value used when the parameter is absent, for display.
    pub default: Option<&'static str>,
}

const fn p(
    name: &'static str,
    required: bool,
    secret: bool,
    kind: ParamKind,
    default: Option<&'static str>,
    description: &'static str,
) -> ParameterSpec {
    ParameterSpec {
        name,
        required,
        secret,
        description,
        kind,
        default,
    }
}

use ParamKind::*;

pub(crate) const IPMI_INTERFACES: &[&str] = &["lanplus", "lan"];

const IPMI: &[ParameterSpec] = &[
    p(
        "power_address",
        true,
        false,
        Text,
        None,
        "BMC host name or IP address",
    ),
    p(
        "power_port",
        false,
        false,
        Port,
        Some("623"),
        "BMC UDP port",
    ),
    p("power_user", true, false, Text, None, "BMC user name"),
    p("power_pass", true, true, Text, None, "BMC password"),
    p(
        "interface",
        false,
        false,
        Choice(IPMI_INTERFACES),
        Some("lanplus"),
        "ipmitool interface: lanplus (IPMI 2.0) or lan (IPMI 1.5)",
    ),
    p(
        "cipher_suite_id",
        false,
        false,
        Text,
        Some("3"),
        "IPMI 2.0 cipher suite (lanplus only)",
    ),
];

const REDFISH: &[ParameterSpec] = &[
    p(
        "power_address",
        true,
        false,
        Text,
        None,
        "BMC host[:port] or https URL",
    ),
    p("power_user", true, false, Text, None, "BMC user name"),
    p("power_pass", true, true, Text, None, "BMC password"),
    p(
        "node_id",
        false,
        false,
        Text,
        None,
        "Redfish System id; defaults to the first member of /redfish/v1/Systems",
    ),
    p(
        "verify_tls",
        false,
        false,
        Bool,
        Some("false"),
        "verify the BMC's TLS certificate (BMCs usually have self-signed ones)",
    ),
];

const QEMU: &[ParameterSpec] = &[
    p("qmp_socket", true, false, Text, None, "path of the QEMU QMP unix socket"),
    p("command", false, false, Argv, None, "full QEMU argv (JSON array of strings) used to start the machine when it is off; -daemonize is appended if absent"),
];

const VIRSH: &[ParameterSpec] = &[
    p(
        "power_address",
        true,
        false,
        Text,
        None,
        "libvirt URI, e.g. qemu+ssh://user@host/system",
    ),
    p("power_id", true, false, Text, None, "libvirt domain name"),
];

const WOL: &[ParameterSpec] = &[
    p(
        "mac_address",
        true,
        false,
        Mac,
        None,
        "MAC address of the NIC to wake",
    ),
    p(
        "broadcast_address",
        false,
        false,
        Ipv4,
        Some("255.255.255.255"),
        "IPv4 (broadcast) address to send the magic packet to",
    ),
    p("port", false, false, Port, Some("9"), "UDP port"),
];

const WEBHOOK: &[ParameterSpec] = &[
    p(
        "power_on_uri",
        true,
        false,
        Url,
        None,
        "URL POSTed to power on",
    ),
    p(
        "power_off_uri",
        true,
        false,
        Url,
        None,
        "URL POSTed to power off",
    ),
    p(
        "power_query_uri",
        true,
        false,
        Url,
        None,
        "URL fetched (GET) to query the power state",
    ),
    p(
        "power_on_regex",
        false,
        false,
        Regex,
        Some(r"(?i)status.*:.*running"),
        "query response body matching this means on",
    ),
    p(
        "power_off_regex",
        false,
        false,
        Regex,
        Some(r"(?i)status.*:.*stopped"),
        "query response body matching this means off",
    ),
    p(
        "power_user",
        false,
        false,
        Text,
        None,
        "basic auth user name",
    ),
    p("power_pass", false, true, Text, None, "basic auth password"),
    p(
        "power_token",
        false,
        true,
        Text,
        None,
        "bearer token (instead of basic auth)",
    ),
    p(
        "verify_tls",
        false,
        false,
        Bool,
        Some("true"),
        "verify the server's TLS certificate",
    ),
];

const MANUAL: &[ParameterSpec] = &[];

/// Every power type [`crate::driver_for`] knows.
pub const POWER_TYPES: &[&str] = &[
    "ipmi", "redfish", "qemu", "virsh", "wol", "webhook", "manual",
];

/// The parameters a power type accepts, or `None` for an unknown type.
pub fn parameter_specs(power_type: &str) -> Option<&'static [ParameterSpec]> {
    Some(match power_type {
        "ipmi" => IPMI,
        "redfish" => REDFISH,
        "qemu" => QEMU,
        "virsh" => VIRSH,
        "wol" => WOL,
        "webhook" => WEBHOOK,
        "manual" => MANUAL,
        _ => return None,
    })
}

/// Checks a parameter object before it is stored: unknown power type, unknown
/// key, missing required key or a value of the wrong type give
/// [`PowerError::InvalidParameters`] naming the field. Empty strings count as
/// absent. Error messages never echo a value, as it may be a secret.
pub fn validate_parameters(
    power_type: &str,
    params: &Map<String, Value>,
) -> Result<(), PowerError> {
    let specs = parameter_specs(power_type).ok_or_else(|| {
        PowerError::invalid(
            "power_type",
            format!(
                "unknown power type {power_type:?}, expected one of {}",
                POWER_TYPES.join(", ")
            ),
        )
    })?;
    for key in params.keys() {
        if !specs.iter().any(|s| s.name == key) {
            return Err(PowerError::invalid(
                key.as_str(),
                format!("unknown parameter for power type {power_type}"),
            ));
        }
    }
    for spec in specs {
        match params.get(spec.name) {
            None | Some(Value::Null) => {
                if spec.required {
                    return Err(PowerError::invalid(spec.name, "required"));
                }
            }
            Some(Value::String(s)) if s.is_empty() => {
                if spec.required {
                    return Err(PowerError::invalid(spec.name, "required"));
                }
            }
            Some(v) => check_kind(spec, v)?,
        }
    }
    if power_type == "webhook"
        && params.get("power_pass").is_some_and(non_empty)
        && !params.get("power_user").is_some_and(non_empty)
    {
        return Err(PowerError::invalid(
            "power_user",
            "required when power_pass is set",
        ));
    }
    Ok(())
}

fn non_empty(v: &Value) -> bool {
    !matches!(v, Value::Null) && v.as_str() != Some("")
}

fn check_kind(spec: &ParameterSpec, v: &Value) -> Result<(), PowerError> {
    let bad = |reason: &str| Err(PowerError::invalid(spec.name, reason));
    match (spec.kind, v) {
        (Argv, _) => parse_argv(v)
            .map(drop)
            .ok_or(())
            .or_else(|()| bad("expected a non-empty JSON array of strings")),
        (_, Value::Array(_) | Value::Object(_)) => bad("expected a string, number or boolean"),
        (Text, _) => Ok(()),
        (Port, _) => parse_port(v)
            .map(drop)
            .ok_or(())
            .or_else(|()| bad("expected a port number 1-65535")),
        (Bool, _) => parse_bool(v)
            .map(drop)
            .ok_or(())
            .or_else(|()| bad("expected true or false")),
        (Mac, Value::String(s)) if parse_mac(s).is_some() => Ok(()),
        (Mac, _) => bad("expected a MAC address like 52:54:00:12:34:56"),
        (Ipv4, Value::String(s)) if s.parse::<std::net::Ipv4Addr>().is_ok() => Ok(()),
        (Ipv4, _) => bad("expected an IPv4 address"),
        (Url, Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => {
            match reqwest::Url::parse(s) {
                Ok(u) if u.host_str().is_some() => Ok(()),
                _ => bad("expected an http(s) URL"),
            }
        }
        (Url, _) => bad("expected an http(s) URL"),
        (Regex, Value::String(s)) => match regex::Regex::new(s) {
            Ok(_) => Ok(()),
            Err(_) => bad("not a valid regular expression"),
        },
        (Regex, _) => bad("expected a regular expression"),
        (Choice(words), Value::String(s)) if words.contains(&s.as_str()) => Ok(()),
        (Choice(words), _) => Err(PowerError::invalid(
            spec.name,
            format!("expected one of {}", words.join(", ")),
        )),
    }
}

pub(crate) fn parse_port(v: &Value) -> Option<u16> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    u16::try_from(n).ok().filter(|&p| p != 0)
}

pub(crate) fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Some(true),
            "false" | "no" | "0" | "off" => Some(false),
            _ => None,
        },
        Value::Number(n) => match n.as_u64()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

pub(crate) fn parse_argv(v: &Value) -> Option<Vec<String>> {
    let parsed;
    let v = match v {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).ok()?;
            &parsed
        }
        v => v,
    };
    let argv: Vec<String> = v
        .as_array()?
        .iter()
        .map(|a| a.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    (!argv.is_empty()).then_some(argv)
}

/// Typed access to already validated parameters, applying defaults.
pub(crate) struct Params<'a>(pub &'a Map<String, Value>);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| non_empty(v))
    }

    pub fn str(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    pub fn required(&self, name: &str) -> Result<String, PowerError> {
        self.str(name)
            .ok_or_else(|| PowerError::invalid(name, "required"))
    }

    pub fn port(&self, name: &str, default: u16) -> u16 {
        self.get(name).and_then(parse_port).unwrap_or(default)
    }

    pub fn bool(&self, name: &str, default: bool) -> bool {
        self.get(name).and_then(parse_bool).unwrap_or(default)
    }

    pub fn argv(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).and_then(parse_argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn field_of(r: Result<(), PowerError>) -> String {
        match r {
            Err(PowerError::InvalidParameters { field, .. }) => field,
            other => panic!("expected InvalidParameters, got {other:?}"),
        }
    }

    #[test]
    fn every_power_type_has_specs() {
        for t in POWER_TYPES {
            assert!(parameter_specs(t).is_some(), "{t}");
        }
        assert!(parameter_specs("nope").is_none());
    }

    #[test]
    fn secrets_are_marked() {
        let secret = |t: &str, n: &str| {
            parameter_specs(t)
                .unwrap()
                .iter()
                .find(|s| s.name == n)
                .unwrap()
                .secret
        };
        assert!(secret("ipmi", "power_pass"));
        assert!(secret("redfish", "power_pass"));
        assert!(secret("webhook", "power_pass"));
        assert!(secret("webhook", "power_token"));
        assert!(!secret("ipmi", "power_user"));
    }

    #[test]
    fn valid_ipmi() {
        let p = obj(json!({"power_address": "10.0.0.5", "power_user": "admin",
            "power_pass": "pw", "power_port": 623, "interface": "lan"}));
        validate_parameters("ipmi", &p).unwrap();
        // MAAS-style stringly typed numbers are fine too.
        let p = obj(json!({"power_address": "10.0.0.5", "power_user": "admin",
            "power_pass": "pw", "power_port": "6230"}));
        validate_parameters("ipmi", &p).unwrap();
    }

    #[test]
    fn unknown_power_type() {
        assert_eq!(
            field_of(validate_parameters("hmc", &Map::new())),
            "power_type"
        );
    }

    #[test]
    fn unknown_key() {
        let p = obj(
            json!({"power_address": "h", "power_user": "u", "power_pass": "p", "colour": "red"}),
        );
        assert_eq!(field_of(validate_parameters("ipmi", &p)), "colour");
    }

    #[test]
    fn missing_required_key() {
        let p = obj(json!({"power_address": "h", "power_user": "u"}));
        assert_eq!(field_of(validate_parameters("ipmi", &p)), "power_pass");
        let p = obj(json!({"power_address": "h", "power_user": "u", "power_pass": ""}));
        assert_eq!(field_of(validate_parameters("ipmi", &p)), "power_pass");
    }

    #[test]
    fn wrong_types() {
        let base = json!({"power_address": "h", "power_user": "u", "power_pass": "p"});
        let with = |k: &str, v: Value| {
            let mut m = obj(base.clone());
            m.insert(k.into(), v);
            m
        };
        assert_eq!(
            field_of(validate_parameters(
                "ipmi",
                &with("power_port", json!(70000))
            )),
            "power_port"
        );
        assert_eq!(
            field_of(validate_parameters("ipmi", &with("power_port", json!("x")))),
            "power_port"
        );
        assert_eq!(
            field_of(validate_parameters(
                "ipmi",
                &with("interface", json!("usb"))
            )),
            "interface"
        );
        assert_eq!(
            field_of(validate_parameters(
                "ipmi",
                &with("power_user", json!(["a"]))
            )),
            "power_user"
        );
        assert_eq!(
            field_of(validate_parameters(
                "redfish",
                &with("verify_tls", json!("maybe"))
            )),
            "verify_tls"
        );
        assert_eq!(
            field_of(validate_parameters(
                "wol",
                &obj(json!({"mac_address": "52:54:00:12:34"}))
            )),
            "mac_address"
        );
        assert_eq!(
            field_of(validate_parameters(
                "wol",
                &obj(json!({"mac_address": "52:54:00:12:34:56", "broadcast_address": "x"}))
            )),
            "broadcast_address"
        );
        let hook = json!({"power_on_uri": "http://h/on", "power_off_uri": "http://h/off",
            "power_query_uri": "ftp://h/q"});
        assert_eq!(
            field_of(validate_parameters("webhook", &obj(hook))),
            "power_query_uri"
        );
        let hook = json!({"power_on_uri": "http://h/on", "power_off_uri": "http://h/off",
            "power_query_uri": "http://h/q", "power_on_regex": "("});
        assert_eq!(
            field_of(validate_parameters("webhook", &obj(hook))),
            "power_on_regex"
        );
        let q = json!({"qmp_socket": "/s", "command": "[\"qemu\", 1]"});
        assert_eq!(field_of(validate_parameters("qemu", &obj(q))), "command");
    }

    #[test]
    fn qemu_command_as_array_or_string() {
        validate_parameters(
            "qemu",
            &obj(json!({"qmp_socket": "/s", "command": ["qemu-system-x86_64", "-S"]})),
        )
        .unwrap();
        validate_parameters(
            "qemu",
            &obj(json!({"qmp_socket": "/s", "command": "[\"qemu-system-x86_64\"]"})),
        )
        .unwrap();
    }

    #[test]
    fn error_does_not_echo_secret_value() {
        let p = obj(json!({"power_address": "h", "power_user": "u", "power_pass": ["hunter2"]}));
        let err = validate_parameters("ipmi", &p).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("52:54:00:ab:CD:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(
            parse_mac("52-54-00-ab-cd-ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(parse_mac("5254.00ab.cdef"), None);
        assert_eq!(parse_mac("52:54:00:ab:cd:e"), None);
    }
}

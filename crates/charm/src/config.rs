//! A charm's `config.yaml`: typed options with defaults, and validation of
//! values given in a bundle or on the command line.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::yaml::{self, join_path, parse_bool, Kind, Node, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionType {
    String,
    Int,
    Float,
    Boolean,
}

impl fmt::Display for OptionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptionType::String => "string",
            OptionType::Int => "int",
            OptionType::Float => "float",
            OptionType::Boolean => "boolean",
        })
    }
}

impl OptionType {
    fn expected(self) -> &'static str {
        match self {
            OptionType::String => "expected a string",
            OptionType::Int => "expected an integer",
            OptionType::Float => "expected a number",
            OptionType::Boolean => "expected true or false",
        }
    }
}

/// A typed config value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Int(i64),
    Float(f64),
    Boolean(bool),
}

impl Value {
    /// The value as YAML (strings always quoted, so they read back as strings).
    pub fn to_yaml(&self) -> String {
        match self {
            Value::String(s) => yaml::quote(s),
            Value::Int(i) => i.to_string(),
            Value::Float(x) => format_float(*x),
            Value::Boolean(b) => b.to_string(),
        }
    }
}

fn format_float(x: f64) -> String {
    if x.is_nan() {
        ".nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        // Debug prints the shortest text that reads back exactly, with a dot or exponent.
        format!("{x:?}")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => f.write_str(s),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => f.write_str(&format_float(*x)),
            Value::Boolean(b) => write!(f, "{b}"),
        }
    }
}

fn parse_int(text: &str) -> Option<i64> {
    let t = text.strip_prefix('+').unwrap_or(text);
    t.parse().ok()
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    // Only decimal notation: Rust also reads "inf" and "nan", YAML does not.
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && text.chars().any(|c| c.is_ascii_digit());
    if ok {
        text.parse().ok()
    } else {
        None
    }
}

/// One option of a charm's config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigOption {
    pub kind: OptionType,
    pub default: Option<Value>,
    pub description: String,
}

impl ConfigOption {
    /// Reads a value given as text (`key=value` on the command line).
    pub fn parse_text(&self, text: &str) -> Option<Value> {
        match self.kind {
            OptionType::String => Some(Value::String(text.to_owned())),
            OptionType::Int => parse_int(text).map(Value::Int),
            OptionType::Float => parse_float(text).map(Value::Float),
            OptionType::Boolean => parse_bool(text).map(Value::Boolean),
        }
    }

    /// Reads a value written in YAML: quoted scalars are strings, so
    /// `port: "3306"` is not an int; a string option takes any scalar's text.
    pub(crate) fn parse_node(&self, node: &Node) -> Option<Value> {
        match &node.kind {
            Kind::Scalar { text, plain } if *plain || self.kind == OptionType::String => {
                self.parse_text(text)
            }
            _ => None,
        }
    }
}

/// A charm's `config.yaml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSchema {
    pub options: BTreeMap<String, ConfigOption>,
}

/// Option names: letters, digits, `-` and `_`, starting with a letter.
pub(crate) fn valid_option_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ConfigSchema {
    pub fn parse(file: &str, text: &str) -> Result<ConfigSchema> {
        let root = yaml::parse(file, text)?;
        Self::from_node(&Reader { file }, &root)
    }

    fn from_node(r: &Reader, root: &Node) -> Result<ConfigSchema> {
        let top = r.map(root, "")?;
        r.known_keys(&top, "", &["options"])?;
        let mut options = BTreeMap::new();
        for (_, _, opts) in &top {
            for (name, knode, spec) in r.map(opts, "options")? {
                let path = join_path("options", &name);
                if !valid_option_name(&name) {
                    return Err(r.err(knode, &path, "invalid option name"));
                }
                let fields = r.map(spec, &path)?;
                r.known_keys(&fields, &path, &["type", "default", "description"])?;
                let field = |k: &str| fields.iter().find(|(n, _, _)| n == k).map(|(_, _, v)| *v);
                let kind = match field("type") {
                    None => OptionType::String,
                    Some(t) => match r.string(t, &join_path(&path, "type"))?.as_str() {
                        "string" => OptionType::String,
                        "int" => OptionType::Int,
                        "float" => OptionType::Float,
                        "boolean" => OptionType::Boolean,
                        other => {
                            return Err(r.err(
                                t,
                                &join_path(&path, "type"),
                                format!(
                                    "unknown type {other} (expected string, int, float or boolean)"
                                ),
                            ))
                        }
                    },
                };
                let description = match field("description") {
                    Some(d) => r
                        .opt_string(d, &join_path(&path, "description"))?
                        .unwrap_or_default(),
                    None => String::new(),
                };
                let mut option = ConfigOption {
                    kind,
                    default: None,
                    description,
                };
                if let Some(d) = field("default") {
                    if !matches!(d.kind, Kind::Null) {
                        option.default = Some(option.parse_node(d).ok_or_else(|| {
                            r.err(d, &join_path(&path, "default"), kind.expected())
                        })?);
                    }
                }
                options.insert(name, option);
            }
        }
        Ok(ConfigSchema { options })
    }

    /// Checks values given as text (`key=value`) and returns the full
    /// config: the given values typed, defaults for the rest (options with
    /// no default and no value are left out).
    pub fn validate(&self, given: &BTreeMap<String, String>) -> Result<BTreeMap<String, Value>> {
        let mut errors = Vec::new();
        let mut typed = BTreeMap::new();
        for (key, text) in given {
            match self.options.get(key) {
                None => errors.push(self.unknown(key)),
                Some(o) => match o.parse_text(text) {
                    Some(v) => {
                        typed.insert(key.clone(), v);
                    }
                    None => errors.push(Error::Config {
                        key: key.clone(),
                        message: format!(
                            "{}, found {text:?} ({} option)",
                            o.kind.expected(),
                            o.kind
                        ),
                    }),
                },
            }
        }
        Error::collect(errors)?;
        Ok(self.with_defaults(typed))
    }

    /// Checks already typed values (a bundle's options, already read
    /// against this schema) and fills in defaults.
    pub fn with_defaults(&self, mut values: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        for (k, o) in &self.options {
            if let Some(d) = &o.default {
                values.entry(k.clone()).or_insert_with(|| d.clone());
            }
        }
        values
    }

    /// Parses `key=value` pairs from the command line.
    pub fn parse_assignments<'a>(
        &self,
        args: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeMap<String, Value>> {
        let mut given = BTreeMap::new();
        for arg in args {
            let Some((k, v)) = arg.split_once('=') else {
                return Err(Error::Config {
                    key: arg.to_owned(),
                    message: "expected key=value".into(),
                });
            };
            given.insert(k.to_owned(), v.to_owned());
        }
        let typed = self.validate(&given)?;
        // Only what was given: defaults are the charm's, not a setting.
        Ok(typed
            .into_iter()
            .filter(|(k, _)| given.contains_key(k))
            .collect())
    }

    pub(crate) fn unknown(&self, key: &str) -> Error {
        Error::Config {
            key: key.to_owned(),
            message: self.unknown_message(),
        }
    }

    pub(crate) fn unknown_message(&self) -> String {
        if self.options.is_empty() {
            "unknown option (the charm has no options)".into()
        } else {
            format!(
                "unknown option (the charm has: {})",
                self.options.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        }
    }

    pub(crate) fn expected(kind: OptionType) -> &'static str {
        kind.expected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "\
options:
  port:
    type: int
    default: 3306
    description: TCP port
  ratio:
    type: float
    default: 0.5
  debug:
    type: boolean
    default: false
  name:
    type: string
  motd:
    default: hello
";

    fn schema() -> ConfigSchema {
        ConfigSchema::parse("config.yaml", SCHEMA).unwrap()
    }

    fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_types_and_defaults() {
        let s = schema();
        assert_eq!(s.options["port"].kind, OptionType::Int);
        assert_eq!(s.options["port"].default, Some(Value::Int(3306)));
        assert_eq!(s.options["ratio"].default, Some(Value::Float(0.5)));
        assert_eq!(s.options["motd"].kind, OptionType::String);
        assert_eq!(s.options["name"].default, None);
    }

    #[test]
    fn validate_types_values_and_applies_defaults() {
        let v = schema()
            .validate(&given(&[
                ("port", "5432"),
                ("debug", "true"),
                ("ratio", "1"),
            ]))
            .unwrap();
        assert_eq!(v["port"], Value::Int(5432));
        assert_eq!(v["debug"], Value::Boolean(true));
        assert_eq!(v["ratio"], Value::Float(1.0));
        assert_eq!(v["motd"], Value::String("hello".into()));
        assert!(!v.contains_key("name"));
    }

    #[test]
    fn validate_names_key_and_type() {
        let e = schema()
            .validate(&given(&[("port", "many"), ("colour", "red")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config option colour: unknown option (the charm has: debug, motd, name, port, ratio)"), "{e}");
        assert!(
            e.contains("config option port: expected an integer, found \"many\" (int option)"),
            "{e}"
        );
    }

    #[test]
    fn assignments_keep_only_what_was_given() {
        let v = schema().parse_assignments(["port=1", "name=a=b"]).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v["name"], Value::String("a=b".into()));
        assert!(schema().parse_assignments(["port"]).is_err());
    }

    #[test]
    fn schema_errors_are_located() {
        let e = ConfigSchema::parse(
            "config.yaml",
            "options:\n  port:\n    type: int\n    default: x\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "config.yaml:4:14: options.port.default: expected an integer"
        );
        let e = ConfigSchema::parse("config.yaml", "options:\n  port:\n    type: integer\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.yaml:3:11: options.port.type: unknown type integer"),
            "{e}"
        );
    }

    #[test]
    fn floats_print_so_they_read_back() {
        for x in [0.5, 1.0, 1e-7, -3.25e300, 123456789.0] {
            let t = Value::Float(x).to_yaml();
            assert_eq!(parse_float(&t), Some(x), "{t}");
        }
    }
}

//! A YAML document as a tree of nodes that remember where they were
//! written, so every later error can name file, line, column and key path.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::error::{Error, Location, Result};

/// Deeper nesting than this is not a charm or bundle file, and recursion
/// must stay bounded for hostile input.
const MAX_DEPTH: usize = 64;
/// Aliases copy nodes; the cap stops a "billion laughs" document.
const MAX_NODES: usize = 200_000;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Null,
    /// `plain` is false for quoted and block scalars, which are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Null => "nothing",
            Kind::Scalar { .. } => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    fn size(&self) -> usize {
        1 + match &self.kind {
            Kind::Null | Kind::Scalar { .. } => 0,
            Kind::Seq(items) => items.iter().map(Node::size).sum(),
            Kind::Map(pairs) => pairs.iter().map(|(k, v)| k.size() + v.size()).sum(),
        }
    }
}

/// Parses one YAML document.
pub(crate) fn parse(file: &str, text: &str) -> Result<Node> {
    let mut b = Builder {
        file,
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut root = None;
    loop {
        let (ev, mark) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            ev => {
                if root.is_some() {
                    return Err(b.syntax(mark, "expected one document, found several"));
                }
                root = Some(b.node(ev, mark, 0)?);
            }
        }
    }
    Ok(root.unwrap_or(Node {
        kind: Kind::Null,
        line: 1,
        column: 1,
    }))
}

struct Builder<'a> {
    file: &'a str,
    parser: Parser<std::str::Chars<'a>>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker)> {
        self.parser.next_token().map_err(|e| Error::Syntax {
            at: Location {
                file: self.file.to_owned(),
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            message: e.info().to_owned(),
        })
    }

    fn syntax(&self, mark: Marker, message: &str) -> Error {
        Error::Syntax {
            at: Location {
                file: self.file.to_owned(),
                line: mark.line(),
                column: mark.col() + 1,
            },
            message: message.to_owned(),
        }
    }

    fn count(&mut self, n: usize, mark: Marker) -> Result<()> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(self.syntax(mark, "document too large (aliases expand too far)"));
        }
        Ok(())
    }

    fn node(&mut self, ev: Event, mark: Marker, depth: usize) -> Result<Node> {
        if depth > MAX_DEPTH {
            return Err(self.syntax(mark, "nested too deeply"));
        }
        self.count(1, mark)?;
        let at = |kind| Node {
            kind,
            line: mark.line(),
            column: mark.col() + 1,
        };
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, _) => {
                let plain = style == TScalarStyle::Plain;
                let kind = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Kind::Null
                } else {
                    Kind::Scalar { text, plain }
                };
                (at(kind), anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(ev, m, depth + 1)?);
                }
                (at(Kind::Seq(items)), anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut pairs: Vec<(Node, Node)> = Vec::new();
                loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::MappingEnd {
                        break;
                    }
                    let key = self.node(ev, m, depth + 1)?;
                    let (ev, m2) = self.next()?;
                    let value = self.node(ev, m2, depth + 1)?;
                    if let Kind::Scalar { text, .. } = &key.kind {
                        if pairs.iter().any(
                            |(k, _)| matches!(&k.kind, Kind::Scalar { text: t, .. } if t == text),
                        ) {
                            return Err(self.syntax(m, &format!("duplicate key {text}")));
                        }
                    }
                    pairs.push((key, value));
                }
                // Block mappings are marked where the parser noticed them,
                // often past their first key; the first key reads better.
                let mut node = at(Kind::Map(Vec::new()));
                if let Some((k, _)) = pairs.first() {
                    (node.line, node.column) = (k.line, k.column);
                }
                node.kind = Kind::Map(pairs);
                (node, anchor)
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(self.syntax(mark, "alias to an unknown anchor"));
                };
                self.count(node.size(), mark)?;
                return Ok(node);
            }
            _ => return Err(self.syntax(mark, "unexpected YAML event")),
        };
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

/// Reads typed values out of nodes, naming file, position and key path in
/// every error.
pub(crate) struct Reader<'a> {
    pub file: &'a str,
}

impl Reader<'_> {
    pub fn at(&self, node: &Node) -> Location {
        Location {
            file: self.file.to_owned(),
            line: node.line,
            column: node.column,
        }
    }

    pub fn err(&self, node: &Node, path: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            at: self.at(node),
            path: if path.is_empty() {
                "(top level)".to_owned()
            } else {
                path.to_owned()
            },
            message: message.into(),
        }
    }

    /// A mapping's entries with their keys as strings; nothing counts as empty.
    pub fn map<'n>(&self, node: &'n Node, path: &str) -> Result<Vec<(String, &'n Node, &'n Node)>> {
        match &node.kind {
            Kind::Null => Ok(Vec::new()),
            Kind::Map(pairs) => pairs
                .iter()
                .map(|(k, v)| match &k.kind {
                    Kind::Scalar { text, .. } => Ok((text.clone(), k, v)),
                    _ => Err(self.err(
                        k,
                        path,
                        format!("expected a scalar key, found {}", k.describe()),
                    )),
                })
                .collect(),
            _ => Err(self.err(
                node,
                path,
                format!("expected a mapping, found {}", node.describe()),
            )),
        }
    }

    pub fn seq<'n>(&self, node: &'n Node, path: &str) -> Result<&'n [Node]> {
        match &node.kind {
            Kind::Null => Ok(&[]),
            Kind::Seq(items) => Ok(items),
            _ => Err(self.err(
                node,
                path,
                format!("expected a list, found {}", node.describe()),
            )),
        }
    }

    pub fn string(&self, node: &Node, path: &str) -> Result<String> {
        match &node.kind {
            Kind::Scalar { text, .. } => Ok(text.clone()),
            _ => Err(self.err(
                node,
                path,
                format!("expected a string, found {}", node.describe()),
            )),
        }
    }

    pub fn opt_string(&self, node: &Node, path: &str) -> Result<Option<String>> {
        match &node.kind {
            Kind::Null => Ok(None),
            _ => self.string(node, path).map(Some),
        }
    }

    pub fn uint(&self, node: &Node, path: &str) -> Result<u32> {
        match &node.kind {
            Kind::Scalar { text, plain: true } => text
                .parse()
                .map_err(|_| self.err(node, path, "expected a non-negative integer")),
            _ => Err(self.err(node, path, "expected a non-negative integer")),
        }
    }

    pub fn boolean(&self, node: &Node, path: &str) -> Result<bool> {
        match &node.kind {
            Kind::Scalar { text, plain: true } => {
                parse_bool(text).ok_or_else(|| self.err(node, path, "expected true or false"))
            }
            _ => Err(self.err(node, path, "expected true or false")),
        }
    }

    /// Rejects keys outside `known`, listing the ones allowed.
    pub fn known_keys(
        &self,
        entries: &[(String, &Node, &Node)],
        path: &str,
        known: &[&str],
    ) -> Result<()> {
        for (k, knode, _) in entries {
            if !known.contains(&k.as_str()) {
                return Err(self.err(
                    knode,
                    &join_path(path, k),
                    format!("unknown key (expected one of: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

pub(crate) fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// YAML 1.2 core schema booleans.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// Double-quoted YAML, which can hold any string.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20
                || c == '\u{7f}'
                || c == '\u{85}'
                || c == '\u{2028}'
                || c == '\u{2029}'
                || c == '\u{feff}' =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_position() {
        let n = parse("x.yaml", "a:\n  b: 1\n  c: [x, 'y']\n").unwrap();
        let r = Reader { file: "x.yaml" };
        let top = r.map(&n, "").unwrap();
        let inner = r.map(top[0].2, "a").unwrap();
        assert_eq!((inner[1].2.line, inner[1].2.column), (3, 6));
        assert_eq!(r.uint(inner[0].2, "a.b").unwrap(), 1);
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = parse("x.yaml", "a: [1, 2\nb: 3\n").unwrap_err().to_string();
        assert!(e.starts_with("x.yaml:"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let e = parse("x.yaml", "a: 1\na: 2\n").unwrap_err().to_string();
        assert!(e.contains("duplicate key a"), "{e}");
        assert!(e.starts_with("x.yaml:2:"), "{e}");
    }

    #[test]
    fn alias_bombs_stop() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(parse("x.yaml", &doc).is_err());
    }

    #[test]
    fn quoting_round_trips() {
        for s in ["", "a\"b\\c\n\t", "é ☃ \u{1}", "null", "123", "- x: y"] {
            let n = parse("q", &quote(s)).unwrap();
            assert!(
                matches!(n.kind, Kind::Scalar { ref text, plain: false } if text == s),
                "{s:?}"
            );
        }
    }
}

//! YAML documents to JSON values, remembering the line of every node.
//!
//! We parse with `saphyr-parser` (a maintained YAML 1.2 parser) into a small marked tree and
//! turn that into `serde_json::Value`s, so that the typed resources deserialize through one
//! well-known path (`serde_path_to_error` reports *which field* failed) and every error, even
//! a semantic one found later, can be mapped back to a line through [`LineIndex`].

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde_json::{Map, Number, Value};

/// Upper bound on nodes in one file, so an alias bomb ("billion laughs") cannot exhaust memory.
pub const MAX_NODES: usize = 1_000_000;
/// Upper bound on nesting depth.
pub const MAX_DEPTH: usize = 64;

/// One YAML document, as a JSON value plus the line of each field path.
#[derive(Debug)]
pub struct Document {
    /// The document's content.
    pub value: Value,
    /// Field path (`spec.rules[0].matches`) → 1-based line.
    pub lines: LineIndex,
    /// Line where the document starts.
    pub start_line: usize,
}

/// Maps a field path in the form `serde_path_to_error` prints to the line it came from.
#[derive(Debug, Default)]
pub struct LineIndex {
    by_path: HashMap<String, usize>,
}

impl LineIndex {
    /// The line of `path`, or of its closest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.by_path.get(p) {
                return Some(*line);
            }
            // Strip the last segment: `a.b[3]` → `a.b` → `a`.
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// A syntax error, with its line.
#[derive(Debug)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

enum Node {
    Scalar(String, ScalarStyle, usize),
    Seq(Vec<Node>, usize),
    Map(Vec<(Node, Node)>, usize),
}

impl Node {
    fn line(&self) -> usize {
        match self {
            Node::Scalar(_, _, l) | Node::Seq(_, l) | Node::Map(_, l) => *l,
        }
    }

    fn deep_clone(&self, budget: &mut usize) -> Result<Node, String> {
        *budget = budget
            .checked_sub(1)
            .ok_or("document has too many nodes (alias expansion?)")?;
        Ok(match self {
            Node::Scalar(s, st, l) => Node::Scalar(s.clone(), *st, *l),
            Node::Seq(items, l) => Node::Seq(
                items
                    .iter()
                    .map(|n| n.deep_clone(budget))
                    .collect::<Result<_, _>>()?,
                *l,
            ),
            Node::Map(items, l) => Node::Map(
                items
                    .iter()
                    .map(|(k, v)| Ok((k.deep_clone(budget)?, v.deep_clone(budget)?)))
                    .collect::<Result<_, String>>()?,
                *l,
            ),
        })
    }
}

/// Parses every document of a YAML stream.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut docs = Vec::new();
    let mut stack: Vec<(Node, usize)> = Vec::new(); // (container, anchor)
    let mut pending_key: Vec<Option<Node>> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut budget = MAX_NODES;
    let mut doc_start = 1;
    let mut root: Option<Node> = None;

    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| SyntaxError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        let line = span.start.line();
        let err = |message: String| SyntaxError { line, message };
        let node = match event {
            Event::DocumentStart(_) => {
                doc_start = line;
                anchors.clear();
                None
            }
            Event::DocumentEnd => {
                if let Some(node) = root.take() {
                    let mut lines = LineIndex::default();
                    let value = to_value(node, String::new(), &mut lines).map_err(err)?;
                    docs.push(Document {
                        value,
                        lines,
                        start_line: doc_start,
                    });
                }
                None
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let n = Node::Scalar(text.into_owned(), style, line);
                remember(&mut anchors, anchor, &n, &mut budget).map_err(err)?;
                Some(n)
            }
            Event::Alias(id) => {
                let n = anchors
                    .get(&id)
                    .ok_or_else(|| err("unknown alias".into()))?;
                Some(n.deep_clone(&mut budget).map_err(err)?)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(err(format!("nesting deeper than {MAX_DEPTH} levels")));
                }
                let container = if matches!(event, Event::SequenceStart(..)) {
                    Node::Seq(Vec::new(), line)
                } else {
                    Node::Map(Vec::new(), line)
                };
                stack.push((container, anchor));
                pending_key.push(None);
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (n, anchor) = stack.pop().ok_or_else(|| err("unbalanced YAML".into()))?;
                pending_key.pop();
                remember(&mut anchors, anchor, &n, &mut budget).map_err(err)?;
                Some(n)
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
        };
        let Some(node) = node else { continue };
        budget = budget
            .checked_sub(1)
            .ok_or_else(|| err("document has too many nodes".into()))?;
        match stack.last_mut() {
            None => root = Some(node),
            Some((Node::Seq(items, _), _)) => items.push(node),
            Some((Node::Map(items, _), _)) => {
                let slot = pending_key
                    .last_mut()
                    .ok_or_else(|| err("unbalanced YAML".into()))?;
                match slot.take() {
                    None => *slot = Some(node),
                    Some(key) => items.push((key, node)),
                }
            }
            Some((Node::Scalar(..), _)) => return Err(err("scalar cannot hold children".into())),
        }
    }
    Ok(docs)
}

fn remember(
    anchors: &mut HashMap<usize, Node>,
    anchor: usize,
    node: &Node,
    budget: &mut usize,
) -> Result<(), String> {
    if anchor != 0 {
        anchors.insert(anchor, node.deep_clone(budget)?);
    }
    Ok(())
}

fn to_value(node: Node, path: String, lines: &mut LineIndex) -> Result<Value, String> {
    lines.by_path.insert(path.clone(), node.line());
    Ok(match node {
        Node::Scalar(s, style, _) => scalar(s, style),
        Node::Seq(items, _) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, n)| to_value(n, format!("{path}[{i}]"), lines))
                .collect::<Result<_, _>>()?,
        ),
        Node::Map(items, line) => {
            let mut map = Map::new();
            for (k, v) in items {
                let Node::Scalar(key, _, _) = k else {
                    return Err(format!("line {line}: mapping keys must be plain strings"));
                };
                if map.contains_key(&key) {
                    return Err(format!("duplicate key `{key}`"));
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let value = to_value(v, child, lines)?;
                map.insert(key, value);
            }
            Value::Object(map)
        }
    })
}

/// YAML 1.2 core schema resolution for plain scalars; quoted scalars are always strings.
fn scalar(s: String, style: ScalarStyle) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(s);
    }
    match s.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Value::Number(u.into());
    }
    let looks_numeric = s
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && s.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_paths() {
        let docs = parse_documents("a: 1\nb:\n  - x: '7'\n    y: true\n---\nc: [1, 2]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["b"][0]["x"], Value::String("7".into()));
        assert_eq!(docs[0].value["b"][0]["y"], Value::Bool(true));
        assert_eq!(docs[0].lines.line_of("b[0].y"), Some(4));
        assert_eq!(docs[0].lines.line_of("b[0].missing"), Some(3));
        assert_eq!(docs[1].lines.line_of("c"), Some(6));
        assert_eq!(docs[1].start_line, 5);
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse_documents("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }

    #[test]
    fn duplicate_keys_refused() {
        assert!(parse_documents("a: 1\na: 2\n").is_err());
    }

    #[test]
    fn alias_bomb_is_bounded() {
        let mut y = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for c in 'b'..='k' {
            y.push_str(&format!("{c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = c;
        }
        let e = parse_documents(&y).unwrap_err();
        assert!(e.message.contains("too many nodes"), "{e:?}");
    }
}

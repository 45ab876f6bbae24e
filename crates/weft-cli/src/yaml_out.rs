//! JSON values written as block YAML (for `weft get -o yaml`). Strings are quoted
//! whenever plain YAML could read them as something else.

use serde_json::Value;

/// The value as a YAML document (ending in a newline).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => mapping(&mut out, v, 0),
        Value::Array(a) if !a.is_empty() => sequence(&mut out, v, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn mapping(out: &mut String, v: &Value, indent: usize) {
    let Value::Object(m) = v else { return };
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&string(k));
        out.push(':');
        block(out, v, indent);
    }
}

fn sequence(out: &mut String, v: &Value, indent: usize) {
    let Value::Array(a) = v else { return };
    for item in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match item {
            Value::Object(m) if !m.is_empty() => {
                // First key on the dash's line, the rest aligned under it.
                let mut inner = String::new();
                mapping(&mut inner, item, indent + 2);
                out.push(' ');
                out.push_str(inner.trim_start());
            }
            _ => block(out, item, indent),
        }
    }
}

fn block(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            mapping(out, v, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            sequence(out, v, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

fn string(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./*".contains(c))
        && !s.starts_with(['-', '.', '*'])
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn round_trips_through_the_model_parser() {
        let v = json!({"kind": "Service", "metadata": {"name": "api"}, "spec": {
            "endpoints": [{"address": "127.0.0.1:1", "weight": 2}, {"address": "127.0.0.1:2"}],
            "retry": {"on": ["connect-failure", "5xx"], "attempts": 3},
            "odd": ["true", "1.5", "", "a: b", "-x"], "empty": [], "none": {}}});
        let text = super::to_yaml(&v);
        let docs = weft_model::yaml::parse_documents(&text).unwrap();
        assert_eq!(docs[0].value, v, "{text}");
    }
}

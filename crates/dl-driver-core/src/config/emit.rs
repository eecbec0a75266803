//! YAML text that every reader takes the same way: YAML 1.2 (serde_yaml) and YAML 1.1 (PyYAML and OmegaConf, which
//! DLIO and the MLPerf tools use). Strings are plain only when no reader could take them for anything else, and
//! double-quoted (JSON escapes, valid YAML) otherwise; floats always carry a dot.

use serde_yaml::Value;

/// Block-style YAML for a tree of mappings, sequences and scalars.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Mapping(map) if !map.is_empty() => mapping(&mut out, map, 0),
        Value::Sequence(items) if !items.is_empty() => {
            for item in items {
                out.push_str("- ");
                out.push_str(&flow(item));
                out.push('\n');
            }
        }
        other => {
            out.push_str(&flow(other));
            out.push('\n');
        }
    }
    out
}

fn mapping(out: &mut String, map: &serde_yaml::Mapping, indent: usize) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&scalar(key));
        out.push(':');
        match value {
            Value::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                mapping(out, m, indent + 2);
            }
            Value::Sequence(items) if !items.is_empty() => {
                out.push('\n');
                for item in items {
                    out.push_str(&" ".repeat(indent));
                    out.push_str("- ");
                    out.push_str(&flow(item));
                    out.push('\n');
                }
            }
            other => {
                out.push(' ');
                out.push_str(&flow(other));
                out.push('\n');
            }
        }
    }
}

/// One line: a scalar, or a flow collection (`[a, b]`, `{k: v}`).
fn flow(value: &Value) -> String {
    match value {
        Value::Sequence(items) => format!("[{}]", items.iter().map(flow).collect::<Vec<_>>().join(", ")),
        Value::Mapping(map) => {
            format!(
                "{{{}}}",
                map.iter().map(|(k, v)| format!("{}: {}", scalar(k), flow(v))).collect::<Vec<_>>().join(", ")
            )
        }
        Value::Tagged(tagged) => flow(&tagged.value),
        other => scalar(other),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => float(n.as_f64().expect("checked")),
        Value::Number(n) => n.to_string(),
        Value::String(s) if is_plain(s) => s.clone(),
        Value::String(s) => serde_json::to_string(s).expect("strings serialize"),
        other => flow(other),
    }
}

fn float(v: f64) -> String {
    if v.is_nan() {
        return ".nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { ".inf".into() } else { "-.inf".into() };
    }
    let text = format!("{v:?}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if !mantissa.contains('.') => format!("{mantissa}.0e{exponent}"),
        _ => text,
    }
}

/// Whether `s` reads back as this same string under YAML 1.1 and 1.2 when written plain.
fn is_plain(s: &str) -> bool {
    let Some(first) = s.chars().next() else { return false };
    let safe_chars = s.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    let lower = s.to_ascii_lowercase();
    let keyword = matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "~" | ".inf" | "-.inf" | ".nan"
    );
    let numeric = first.is_ascii_digit() || first == '.' || first == '-' || first == '+';
    safe_chars && !keyword && !numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_strings_are_quoted_and_plain_ones_are_not() {
        for (s, plain) in [
            ("npz", true),
            ("data/unet3d/", true),
            ("off", false),
            ("Yes", false),
            ("1_000", false),
            ("0.5", false),
            ("-x", false),
            ("a b", false),
            ("s3://bucket/p", false),
            ("line\nk: no", false),
            ("", false),
            ("données", true),
        ] {
            assert_eq!(is_plain(s), plain, "{s:?}");
        }
    }

    #[test]
    fn floats_always_carry_a_dot() {
        assert_eq!(float(5e-324), "5.0e-324");
        assert_eq!(float(1e21), "1.0e21");
        assert_eq!(float(0.323), "0.323");
        assert_eq!(float(2.0), "2.0");
        assert_eq!(float(f64::NEG_INFINITY), "-.inf");
    }

    #[test]
    fn output_parses_back_to_the_same_tree() {
        let tree: Value = serde_yaml::from_str(
            "a: {b: 'off', c: [1, 2.5, 'x y'], d: {}, e: [], f: null, g: \"line\\nk: no\"}\nh: [{i: 1}]\nj: 1.0e-7",
        )
        .unwrap();
        let text = to_yaml(&tree);
        assert_eq!(serde_yaml::from_str::<Value>(&text).unwrap(), tree, "{text}");
    }
}

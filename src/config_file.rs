//! Job config files (TOML or YAML, by extension) read strictly: every key the user wrote must
//! be one the config knows, or the read fails naming the file, the line, the key and the
//! closest valid key. serde's own unknown-field handling cannot do this here (`flatten`d
//! sections swallow unknown keys silently, and its errors have no line), so the document is
//! parsed into a JSON tree with a line per key path, compared with the config's *schema* (its
//! serialised form with every optional section present), and only then deserialised.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A parsed config file: its values as JSON and the line of every key (by dotted path).
pub struct ConfigDocument {
    /// The file, for messages.
    pub path: PathBuf,
    /// The document's values.
    pub value: Value,
    lines: HashMap<String, usize>,
}

/// One key of the document that the schema does not have.
#[derive(Clone, Debug, PartialEq)]
pub struct UnknownKey {
    /// Dotted path of the key (`training.learning_rat`).
    pub path: String,
    /// 1-based line of the key, when known.
    pub line: Option<usize>,
    /// What the user probably meant.
    pub hint: Option<String>,
    /// Whether the user gave a table (a section) rather than a value.
    pub is_table: bool,
}

impl ConfigDocument {
    /// Reads `path`: `.toml`, or `.yaml` / `.yml`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| vlmtune_data::DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the format `path`'s extension names.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::parse_yaml(path, text),
            Some("toml") => Self::parse_toml(path, text),
            _ => Err(Error::Config(format!(
                "{}: a config file must end in .toml, .yaml or .yml",
                path.display()
            ))),
        }
    }

    /// Parses TOML text (`path` names it in messages).
    pub fn parse_toml(path: &Path, text: &str) -> Result<Self> {
        let fail = |e: toml::de::Error| Error::Config(format!("{}: {e}", path.display()));
        let table: toml::Table = toml::from_str(text).map_err(fail)?;
        let value = serde_json::to_value(table)
            .map_err(|e| Error::Config(format!("{}: unsupported value: {e}", path.display())))?;
        let spanned = toml::de::DeTable::parse(text).map_err(fail)?;
        let mut lines = HashMap::new();
        toml_lines(spanned.get_ref(), "", text, &mut lines);
        Ok(Self {
            path: path.to_path_buf(),
            value,
            lines,
        })
    }

    /// Parses YAML text (one document; `path` names it in messages).
    pub fn parse_yaml(path: &Path, text: &str) -> Result<Self> {
        use saphyr::LoadableYamlNode;
        let docs = saphyr::MarkedYaml::load_from_str(text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut lines = HashMap::new();
        let value = match docs.as_slice() {
            [] => Value::Object(Map::new()),
            [doc] => yaml_value(doc, "", &mut lines)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
            _ => {
                return Err(Error::Config(format!(
                    "{}: expected one YAML document, found {}",
                    path.display(),
                    docs.len()
                )))
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            value,
            lines,
        })
    }

    /// A document from values and the line of each key path.
    pub fn from_parts(path: PathBuf, value: Value, lines: HashMap<String, usize>) -> Self {
        Self { path, value, lines }
    }

    /// Whether the file is YAML (where TRL's flat layout is accepted too).
    pub fn is_yaml(&self) -> bool {
        matches!(
            self.path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
    }

    /// The line of `path` or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }

    /// Keys of the document the schema lacks, in document order of paths.
    pub fn unknown_keys(&self, schema: &Value) -> Vec<UnknownKey> {
        let mut out = Vec::new();
        unknown_in(&self.value, schema, schema, "", &mut out);
        for key in &mut out {
            key.line = self.line_of(&key.path);
        }
        out.sort_by_key(|k| (k.line, k.path.clone()));
        out
    }

    /// Checks the keys against `schema`, then deserialises; errors name file, line and key.
    pub fn deserialize<T: DeserializeOwned>(&self, schema: &Value) -> Result<T> {
        let unknown = self.unknown_keys(schema);
        if !unknown.is_empty() {
            let lines: Vec<String> = unknown.iter().map(|k| self.describe(k)).collect();
            return Err(Error::Config(lines.join("\n")));
        }
        serde_path_to_error::deserialize(&self.value).map_err(|e| {
            let path = e.path().to_string();
            Error::Config(format!(
                "{}: field `{path}`: {}",
                self.location(self.line_of(&path)),
                e.inner()
            ))
        })
    }

    fn location(&self, line: Option<usize>) -> String {
        match line {
            Some(l) => format!("{}:{l}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    fn describe(&self, key: &UnknownKey) -> String {
        let (section, name) = match key.path.rsplit_once('.') {
            Some((section, name)) => (format!(" in [{section}]"), name),
            None => (String::new(), key.path.as_str()),
        };
        let name = if key.is_table {
            format!("[{}]", key.path)
        } else {
            format!("`{name}`")
        };
        let section = if key.is_table { String::new() } else { section };
        let what = if key.is_table { "section" } else { "key" };
        let hint = key
            .hint
            .as_ref()
            .map(|h| format!("; did you mean {h}?"))
            .unwrap_or_default();
        format!(
            "{}: unknown {what} {name}{section}{hint}",
            self.location(key.line)
        )
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Walks the document and the schema together. A schema object with no keys is a free-form
/// map (`rank_pattern`), and a schema value that is not an object (a null optional, an enum
/// given as a table) leaves the shape to serde.
fn unknown_in(doc: &Value, schema: &Value, root: &Value, prefix: &str, out: &mut Vec<UnknownKey>) {
    let (Value::Object(doc), Value::Object(known)) = (doc, schema) else {
        return;
    };
    if known.is_empty() {
        return;
    }
    for (key, value) in doc {
        let path = join(prefix, key);
        match known.get(key) {
            Some(sub) => unknown_in(value, sub, root, &path, out),
            None => out.push(UnknownKey {
                hint: hint(key, value.is_object(), known, root, prefix),
                path,
                line: None,
                is_table: value.is_object(),
            }),
        }
    }
}

/// `` `learning_rate` `` for a near miss at the same level, or `` `learning_rate` in
/// [training] `` when the key is valid in another section.
fn hint(
    key: &str,
    is_table: bool,
    known: &Map<String, Value>,
    root: &Value,
    prefix: &str,
) -> Option<String> {
    if let Value::Object(sections) = root {
        for (section, fields) in sections {
            if section != prefix && fields.as_object().is_some_and(|f| f.contains_key(key)) {
                return Some(format!("`{key}` in [{section}]"));
            }
        }
    }
    closest(key, known.keys().map(String::as_str)).map(|k| {
        if is_table {
            format!("[{}]", join(prefix, k))
        } else {
            format!("`{k}`")
        }
    })
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn toml_lines(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    text: &str,
    out: &mut HashMap<String, usize>,
) {
    for (key, value) in table {
        let path = join(prefix, key.get_ref());
        out.entry(path.clone())
            .or_insert_with(|| line_at(text, key.span().start));
        if let toml::de::DeValue::Table(sub) = value.get_ref() {
            toml_lines(sub, &path, text, out);
        }
    }
}

fn yaml_value(
    node: &saphyr::MarkedYaml<'_>,
    path: &str,
    lines: &mut HashMap<String, usize>,
) -> std::result::Result<Value, String> {
    use saphyr::{Scalar, YamlData};
    Ok(match &node.data {
        YamlData::Value(scalar) => match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(*b),
            Scalar::Integer(i) => Value::from(*i),
            Scalar::FloatingPoint(f) => serde_json::Number::from_f64(f.into_inner())
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.to_string())),
            Scalar::String(s) => Value::String(s.to_string()),
        },
        YamlData::Representation(s, ..) => Value::String(s.to_string()),
        YamlData::Sequence(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| yaml_value(item, &format!("{path}[{i}]"), lines))
                .collect::<std::result::Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut out = Map::new();
            for (key, value) in map.iter() {
                let name = match &key.data {
                    YamlData::Value(Scalar::String(s)) => s.to_string(),
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                    _ => {
                        return Err(format!(
                            "line {}: a key must be a name",
                            key.span.start.line()
                        ))
                    }
                };
                let sub = join(path, &name);
                lines.insert(sub.clone(), key.span.start.line());
                out.insert(name, yaml_value(value, &sub, lines)?);
            }
            Value::Object(out)
        }
        YamlData::Tagged(_, inner) => yaml_value(inner, path, lines)?,
        YamlData::Alias(_) => return Err(format!("{path}: YAML aliases are not supported")),
        YamlData::BadValue => {
            return Err(format!(
                "line {}: a value that cannot be read",
                node.span.start.line()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        serde_json::json!({
            "training": {"learning_rate": 0.0, "output_dir": "", "rank_pattern": {}},
            "model": {"name": ""},
            "lora": null,
        })
    }

    #[test]
    fn toml_and_yaml_unknown_keys_have_lines_and_hints() {
        let toml = "[model]\nname = \"x\"\n\n[training]\nlearning_rat = 1e-4\nrank_pattern = { q = 1 }\n\n[trainingg]\nx = 1\n";
        let doc = ConfigDocument::parse_toml(Path::new("a.toml"), toml).unwrap();
        let unknown = doc.unknown_keys(&schema());
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert_eq!(unknown[0].path, "training.learning_rat");
        assert_eq!(unknown[0].line, Some(5));
        assert_eq!(unknown[0].hint.as_deref(), Some("`learning_rate`"));
        assert_eq!(unknown[1].path, "trainingg");
        assert_eq!(unknown[1].line, Some(8));
        assert_eq!(unknown[1].hint.as_deref(), Some("[training]"));
        let yaml = "model:\n  learning_rate: 1\ntraining:\n  output_dir: x\n";
        let doc = ConfigDocument::parse_yaml(Path::new("a.yaml"), yaml).unwrap();
        let err = doc
            .deserialize::<serde_json::Value>(&schema())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "a.yaml:2: unknown key `learning_rate` in [model]; did you mean `learning_rate` in [training]?"
        );
    }
}

//! The file source: a file or directory of YAML holding Kubernetes `v1/Service` and
//! `discovery.k8s.io/v1/EndpointSlice` manifests (multi-document files and `v1/List` allowed)
//! and/or xlb's compact standalone format.
//!
//! Problems name the file and line, the object and the field. Nothing is lost to bad input: a
//! file that no longer parses keeps its last good objects, and an object that no longer
//! validates keeps its last good version, until fixed or removed.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::de::DeserializeOwned;

use super::{Object, ObjectKey, Snapshot, compact};
use crate::{
    k8s::{service_spec, slice_spec},
    problem::Problem,
};

/// Objects parsed out of one file, with the line each starts at.
#[derive(Clone, Debug, Default)]
struct FileObjects {
    objects: Vec<(usize, Object)>,
}

/// Loads a path and remembers the last good state of every file and object.
#[derive(Debug, Default)]
pub struct FileSource {
    root: PathBuf,
    last_good_files: HashMap<PathBuf, FileObjects>,
    last_good_objects: HashMap<ObjectKey, Object>,
}

/// A YAML document of a file and the line it starts at (1-based).
struct Document<'a> {
    line: usize,
    text: &'a str,
}

/// Splits a multi-document YAML text at `---` lines.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_sep = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed.starts_with("---\t")
            || trimmed == "...";
        if is_sep {
            docs.push(Document {
                line: start_line,
                text: &text[start..offset],
            });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        line: start_line,
        text: &text[start..],
    });
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

fn yaml_problem(origin_file: &str, doc_line: usize, e: &serde_yaml_ng::Error) -> Problem {
    let line = e.location().map_or(doc_line, |l| doc_line + l.line() - 1);
    let msg = e.to_string();
    // serde_yaml_ng appends " at line X column Y" relative to the document: drop it, the origin
    // carries the file's own line.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    Problem {
        origin: format!("{origin_file}:{line}"),
        object: String::new(),
        field: String::new(),
        message: msg,
    }
}

fn parse_as<T: DeserializeOwned>(
    text: &str,
    file: &str,
    line: usize,
    object: &str,
) -> Result<T, Problem> {
    serde_yaml_ng::from_str::<T>(text).map_err(|e| {
        let mut p = yaml_problem(file, line, &e);
        p.object = object.to_owned();
        p
    })
}

/// Parses one file's text into objects; whole-file problems (syntax) make it `Err`, object
/// problems are returned next to the good objects.
fn parse_file(file: &str, text: &str) -> Result<(FileObjects, Vec<Problem>), Vec<Problem>> {
    let mut objs = FileObjects::default();
    let mut problems = Vec::new();
    let mut syntax = Vec::new();
    for doc in documents(text) {
        let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                syntax.push(yaml_problem(file, doc.line, &e));
                continue;
            }
        };
        let origin = format!("{file}:{}", doc.line);
        let api = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("");
        let ns = value
            .get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default");
        match (api, kind) {
            ("v1", "Service") => {
                let object = format!("Service {ns}/{name}");
                match parse_as::<Service>(doc.text, file, doc.line, &object) {
                    Ok(s) => objs.objects.push((doc.line, Object::Service(Box::new(s)))),
                    Err(p) => problems.push(p),
                }
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let object = format!("EndpointSlice {ns}/{name}");
                match parse_as::<EndpointSlice>(doc.text, file, doc.line, &object) {
                    Ok(s) => objs.objects.push((doc.line, Object::Slice(Box::new(s)))),
                    Err(p) => problems.push(p),
                }
            }
            ("v1", "List") => {
                let items = value.get("items").and_then(|v| v.as_sequence());
                for (i, item) in items.into_iter().flatten().enumerate() {
                    let k = item.get("kind").and_then(|v| v.as_str()).unwrap_or("");
                    let parsed = match k {
                        "Service" => serde_yaml_ng::from_value::<Service>(item.clone())
                            .map(|s| Object::Service(Box::new(s))),
                        "EndpointSlice" => serde_yaml_ng::from_value::<EndpointSlice>(item.clone())
                            .map(|s| Object::Slice(Box::new(s))),
                        _ => continue,
                    };
                    match parsed {
                        Ok(o) => objs.objects.push((doc.line, o)),
                        Err(e) => problems.push(Problem {
                            origin: origin.clone(),
                            object: format!("items[{i}] ({k})"),
                            field: String::new(),
                            message: e.to_string(),
                        }),
                    }
                }
            }
            ("", "") if value.get("services").is_some() => {
                match compact::parse(doc.text, file, doc.line) {
                    Ok((services, mut p)) => {
                        problems.append(&mut p);
                        objs.objects.extend(
                            services
                                .into_iter()
                                .map(|(line, s)| (line, Object::Compact(Box::new(s)))),
                        );
                    }
                    Err(p) => syntax.push(p),
                }
            }
            ("", _) | (_, "") => problems.push(Problem {
                origin,
                object: String::new(),
                field: if api.is_empty() { "apiVersion" } else { "kind" }.to_owned(),
                message: "required (or use the compact format's top-level `services:`)".to_owned(),
            }),
            // Other Kubernetes objects (Deployments, …) may share the directory: not ours.
            _ => {}
        }
    }
    if !syntax.is_empty() {
        return Err(syntax);
    }
    Ok((objs, problems))
}

/// Lists the files a path stands for: the file itself, or a directory's `*.yaml`/`*.yml`/
/// `*.json` files (not hidden; sorted, so the result is deterministic).
pub fn files_of(path: &Path) -> Result<Vec<PathBuf>, Problem> {
    let meta = fs::metadata(path).map_err(|e| Problem {
        origin: path.display().to_string(),
        object: String::new(),
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let rd = fs::read_dir(path).map_err(|e| Problem {
        origin: path.display().to_string(),
        object: String::new(),
        field: String::new(),
        message: format!("cannot list directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

impl FileSource {
    /// A source reading `root` (a file or a directory).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// The path this source reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every file again. Broken files and objects keep their last good version.
    pub fn load(&mut self) -> Snapshot {
        let mut snap = Snapshot::default();
        let files = match files_of(&self.root) {
            Ok(f) => f,
            Err(p) => {
                // The whole path is unreadable: keep everything as it was.
                snap.problems.push(p);
                snap.keep_previous = true;
                return snap;
            }
        };
        let mut current: HashMap<PathBuf, FileObjects> = HashMap::new();
        for f in files {
            let display = f.display().to_string();
            let parsed = fs::read_to_string(&f)
                .map_err(|e| {
                    vec![Problem {
                        origin: display.clone(),
                        object: String::new(),
                        field: String::new(),
                        message: format!("cannot read: {e}"),
                    }]
                })
                .and_then(|text| parse_file(&display, &text));
            match parsed {
                Ok((objs, mut problems)) => {
                    snap.problems.append(&mut problems);
                    current.insert(f, objs);
                }
                Err(mut problems) => {
                    if let Some(prev) = self.last_good_files.get(&f) {
                        for p in &mut problems {
                            p.message
                                .push_str("; keeping this file's last good objects");
                        }
                        current.insert(f, prev.clone());
                    }
                    snap.problems.append(&mut problems);
                }
            }
        }
        self.last_good_files = current;
        let mut files: Vec<_> = self.last_good_files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(b.0));
        let mut seen: BTreeMap<ObjectKey, String> = BTreeMap::new();
        let mut good_now: HashMap<ObjectKey, Object> = HashMap::new();
        for (path, objs) in files {
            for (line, obj) in &objs.objects {
                let origin = format!("{}:{line}", path.display());
                let key = obj.key();
                if let Some(first) = seen.get(&key) {
                    snap.problems.push(Problem {
                        origin,
                        object: key.to_string(),
                        field: String::new(),
                        message: format!("already defined at {first}: ignored"),
                    });
                    continue;
                }
                seen.insert(key.clone(), origin.clone());
                let chosen = match obj.validate() {
                    Ok(()) => Some(obj.clone()),
                    Err(problems) => {
                        let previous = self.last_good_objects.get(&key).cloned();
                        let suffix = if previous.is_some() {
                            "; keeping its last good version"
                        } else {
                            "; skipped"
                        };
                        for p in problems {
                            let mut p = p.at(&origin);
                            p.message.push_str(suffix);
                            snap.problems.push(p);
                        }
                        previous
                    }
                };
                if let Some(o) = chosen {
                    good_now.insert(key, o);
                }
            }
        }
        for obj in good_now.values() {
            snap.add(obj);
        }
        self.last_good_objects = good_now;
        snap
    }
}

impl Object {
    /// Checks the object on its own (the same checks `Snapshot::add` relies on).
    fn validate(&self) -> Result<(), Vec<Problem>> {
        match self {
            Self::Service(s) => service_spec(s).map(|_| ()),
            Self::Slice(s) => slice_spec(s).map(|_| ()),
            Self::Compact(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_at_separators_and_keep_line_numbers() {
        let text = "a: 1\n---\n# only a comment\n---\nb: 2\nc: 3\n--- \nd: 4\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 3);
        assert_eq!((docs[0].line, docs[0].text), (1, "a: 1\n"));
        assert_eq!((docs[1].line, docs[1].text), (5, "b: 2\nc: 3\n"));
        assert_eq!((docs[2].line, docs[2].text), (8, "d: 4\n"));
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let text =
            "apiVersion: v1\nkind: Service\n---\napiVersion: v1\nkind: Service\nmetadata: [\n";
        let err = parse_file("svc.yaml", text).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].origin.starts_with("svc.yaml:"), "{}", err[0]);
        let line: usize = err[0].origin["svc.yaml:".len()..].parse().unwrap();
        assert!(
            line >= 6,
            "line {line} should point into the second document"
        );
    }

    #[test]
    fn wrong_field_type_names_object_and_line() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: eighty\n";
        let (objs, problems) = parse_file("svc.yaml", text).unwrap();
        assert!(objs.objects.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "Service default/web");
        assert_eq!(problems[0].origin, "svc.yaml:7");
    }
}

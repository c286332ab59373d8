//! The file source: a file or directory of YAML holding Kubernetes `v1/Service` and
//! `discovery.k8s.io/v1/EndpointSlice` manifests (multi-document files and `v1/List` allowed)
//! and/or xlb's compact standalone format.
//!
//! Problems name the file and line, the object and the field. Nothing is lost to bad input: a
//! file that no longer parses keeps its last good objects, and an object that no longer
//! validates keeps its last good version, until fixed or removed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::de::DeserializeOwned;

use super::{Delta, Object, ObjectKey, Spec, compact};
use crate::problem::Problem;

/// Objects parsed out of one file, with the line each starts at.
#[derive(Clone, Debug, Default)]
struct FileObjects {
    objects: Vec<(usize, Object)>,
}

/// What identifies a file's content without reading it.
type Stamp = (i64, i64, i64, i64, u64, u64);

fn stamp_of(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).ok()?;
    Some((
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.len(),
        m.ino(),
    ))
}

/// One file as last read.
#[derive(Debug, Default)]
struct FileState {
    stamp: Option<Stamp>,
    /// Valid objects of the file (or their last good versions), first definition per key.
    specs: BTreeMap<ObjectKey, (usize, Spec)>,
    problems: Vec<Problem>,
}

/// Loads a path; on each load re-reads only the files that changed and reports what changed.
#[derive(Debug, Default)]
pub struct FileSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Every file defining a key (the first path in order is in effect).
    defs: HashMap<ObjectKey, BTreeSet<PathBuf>>,
    /// Problems about keys defined in several files.
    duplicates: BTreeMap<ObjectKey, Problem>,
    /// The source could not be listed at all.
    unreadable: Option<Problem>,
    /// What the listing did not read (subdirectories, other files, dangling links).
    listing: Vec<Problem>,
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
    // serde_yaml_ng appends " at line X column Y" relative to the document: the origin carries
    // the file's own line, the message keeps the column.
    let mut msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
    if let Some(l) = e.location() {
        msg.push_str(&format!(" (column {})", l.column()));
    }
    Problem::file(format!("{origin_file}:{line}"), msg)
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

/// The warning for an object xlb does not read.
fn not_ours(kind: &str, api: &str) -> String {
    let hint = match kind {
        "Service" | "EndpointSlice" | "List" => {
            let want = if kind == "EndpointSlice" {
                "discovery.k8s.io/v1"
            } else {
                "v1"
            };
            format!("; {kind} is read as apiVersion {want}")
        }
        _ => String::new(),
    };
    format!(
        "kind {kind:?} ({api}) is not read: xlb reads v1 Service, discovery.k8s.io/v1 \
         EndpointSlice, v1 List and the compact format{hint}; ignored"
    )
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
                        _ => {
                            problems.push(
                                Problem::file(origin.clone(), not_ours(k, "v1/List item"))
                                    .warning(),
                            );
                            continue;
                        }
                    };
                    match parsed {
                        Ok(o) => objs.objects.push((doc.line, o)),
                        Err(e) => {
                            let mut p = Problem::file(origin.clone(), e.to_string());
                            p.object = format!("items[{i}] ({k})");
                            problems.push(p);
                        }
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
            ("", _) | (_, "") => {
                let mut p = Problem::file(
                    origin,
                    "required (or use the compact format's top-level `services:`)",
                );
                p.field = if api.is_empty() { "apiVersion" } else { "kind" }.to_owned();
                problems.push(p);
            }
            // Other objects (Deployments, …) may share the directory: not ours, but said, so a
            // misspelt kind or an old apiVersion does not read as success.
            (api, kind) => {
                let mut p = Problem::file(origin, not_ours(kind, api)).warning();
                p.object = format!("{kind} {ns}/{name}");
                problems.push(p);
            }
        }
    }
    if !syntax.is_empty() {
        return Err(syntax);
    }
    Ok((objs, problems))
}

/// Files larger than this are refused (service files are kilobytes to a few megabytes; a
/// mistaken path to a disk image or a log must not be read into memory).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing: the YAML
/// parser's time grows steeply with depth, and no service file nests more than a few levels.
pub const MAX_NESTING: usize = 64;

/// Lists the files a path stands for: the file itself, or a directory's `*.yaml`/`*.yml`/
/// `*.json` files (not hidden; sorted, so the result is deterministic), with problems about what
/// is not read: subdirectories and other files (warnings), dangling links and special files
/// (errors). `Err` if the path itself cannot be read.
pub fn files_of(path: &Path) -> Result<(Vec<PathBuf>, Vec<Problem>), Problem> {
    let meta = fs::metadata(path)
        .map_err(|e| Problem::file(path.display().to_string(), format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        if !meta.is_file() {
            return Err(Problem::file(
                path.display().to_string(),
                "not a regular file or a directory: not read",
            ));
        }
        return Ok((vec![path.to_owned()], Vec::new()));
    }
    let rd = fs::read_dir(path).map_err(|e| {
        Problem::file(
            path.display().to_string(),
            format!("cannot list directory: {e}"),
        )
    })?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for entry in rd.filter_map(Result::ok) {
        let p = entry.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Hidden entries: editor swap files, a ConfigMap volume's `..data` links.
        if name.starts_with('.') {
            continue;
        }
        let shown = p.display().to_string();
        let ours = name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
        match fs::metadata(&p) {
            Err(e) if fs::symlink_metadata(&p).is_ok() => {
                problems.push(Problem::file(
                    shown,
                    format!("dangling link ({e}): not read"),
                ));
            }
            Err(e) => problems.push(Problem::file(shown, format!("cannot read: {e}"))),
            Ok(m) if m.is_dir() => problems.push(
                Problem::file(
                    shown,
                    "subdirectory: not read (only the directory's own files)",
                )
                .warning(),
            ),
            Ok(_) if !ours => problems.push(
                Problem::file(shown, "not read: only *.yaml, *.yml and *.json files are").warning(),
            ),
            Ok(m) if !m.is_file() => problems.push(Problem::file(
                shown,
                "not a regular file (a FIFO or device): not read",
            )),
            Ok(_) => files.push(p),
        }
    }
    files.sort();
    problems.sort_by(|a, b| a.origin.cmp(&b.origin));
    Ok((files, problems))
}

/// Reads a file as text within `MAX_FILE_BYTES`, refusing special files (reading a FIFO would
/// block, a device would never end).
fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let meta = fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO or device): not read".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} bytes: larger than the {} MiB a service file may have; not read",
            meta.len(),
            MAX_FILE_BYTES >> 20
        ));
    }
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than the {} MiB a service file may have; not read",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(text)
}

/// Line of the first flow collection nested deeper than `MAX_NESTING` (brackets inside quotes
/// and comments do not count), if any.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if prev.is_whitespace() => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Some(i + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    None
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

    /// Reads a changed file into a new state, keeping last good versions of what broke.
    fn read_file(&self, path: &Path, stamp: Option<Stamp>) -> FileState {
        let display = path.display().to_string();
        let prev = self.files.get(path);
        let text = read_text(path)
            .and_then(|text| match too_deep(&text) {
                Some(line) => Err(format!(
                    "line {line}: collections nested deeper than {MAX_NESTING} levels; not parsed"
                )),
                None => Ok(text),
            })
            .map_err(|msg| vec![Problem::file(display.clone(), msg)]);
        let parsed = text
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|text| parse_file(&display, text));
        let docs = text.as_deref().map(documents).unwrap_or_default();
        // A manifest's problem about a field points at that field's line.
        let at_field = |obj: &Object, line: usize, mut p: Problem| -> Problem {
            let doc = matches!(obj, Object::Service(_) | Object::Slice(_))
                .then(|| docs.iter().find(|d| d.line == line))
                .flatten();
            if let Some(doc) = doc
                && !p.field.is_empty()
                && p.origin.is_empty()
                && let Some(off) = super::locate::field_line(doc.text, &p.field)
            {
                p.origin = format!("{display}:{}", line + off);
            }
            p
        };
        let (objs, mut problems) = match parsed {
            Ok(ok) => ok,
            Err(mut problems) => {
                // The file does not parse: all its objects stay as they were.
                for p in &mut problems {
                    p.message
                        .push_str("; keeping this file's last good objects");
                }
                return FileState {
                    stamp,
                    specs: prev.map(|p| p.specs.clone()).unwrap_or_default(),
                    problems,
                };
            }
        };
        let mut specs: BTreeMap<ObjectKey, (usize, Spec)> = BTreeMap::new();
        for (line, obj) in objs.objects {
            let origin = format!("{display}:{line}");
            let key = obj.key();
            if let Some((first, _)) = specs.get(&key) {
                let mut p = Problem::file(
                    origin,
                    format!("already defined at {display}:{first}: ignored"),
                );
                p.object = key.to_string();
                problems.push(p);
                continue;
            }
            match obj.validate() {
                Ok((spec, warnings)) => {
                    problems.extend(
                        warnings
                            .into_iter()
                            .map(|p| at_field(&obj, line, p).at(&origin)),
                    );
                    specs.insert(key, (line, spec));
                }
                Err(found) => {
                    let previous = prev.and_then(|p| p.specs.get(&key)).cloned();
                    let suffix = if previous.is_some() {
                        "; keeping its last good version"
                    } else {
                        "; skipped"
                    };
                    for p in found {
                        let mut p = at_field(&obj, line, p).at(&origin);
                        p.message.push_str(suffix);
                        problems.push(p);
                    }
                    if let Some(prev) = previous {
                        specs.insert(key, prev);
                    }
                }
            }
        }
        FileState {
            stamp,
            specs,
            problems,
        }
    }

    fn effective(&self, key: &ObjectKey) -> Option<&Spec> {
        let path = self.defs.get(key)?.iter().next()?;
        self.files.get(path)?.specs.get(key).map(|(_, s)| s)
    }

    /// Re-reads the files that changed. Returns the objects that changed (all of them on the
    /// first load) and every current problem.
    pub fn load(&mut self) -> Delta {
        let files = match files_of(&self.root) {
            Ok((f, listing)) => {
                self.listing = listing;
                f
            }
            Err(p) => {
                // The whole path is unreadable: keep everything as it was.
                self.unreadable = Some(p);
                return Delta {
                    changes: Vec::new(),
                    problems: self.problems(),
                    noticed: None,
                    ..Delta::default()
                };
            }
        };
        self.unreadable = None;
        let mut touched: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut before: HashMap<ObjectKey, Option<Spec>> = HashMap::new();
        let mut note = |src: &Self, touched: &mut BTreeSet<ObjectKey>, keys: Vec<ObjectKey>| {
            for k in keys {
                if touched.insert(k.clone()) {
                    before.insert(k.clone(), src.effective(&k).cloned());
                }
            }
        };
        // Files gone.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !files.contains(p))
            .cloned()
            .collect();
        for path in gone {
            let keys: Vec<ObjectKey> = self.files[&path].specs.keys().cloned().collect();
            note(self, &mut touched, keys.clone());
            self.files.remove(&path);
            for k in keys {
                if let Some(d) = self.defs.get_mut(&k) {
                    d.remove(&path);
                }
            }
        }
        // Files new or changed (by metadata), parsed in parallel.
        let stale: Vec<(PathBuf, Option<Stamp>)> = files
            .into_iter()
            .map(|p| {
                let st = stamp_of(&p);
                (p, st)
            })
            .filter(|(p, st)| st.is_none() || self.files.get(p).is_none_or(|f| f.stamp != *st))
            .collect();
        let this = &*self;
        let read: Vec<(PathBuf, FileState)> =
            crate::par::par_map(&stale, 8, |(p, st)| (p.clone(), this.read_file(p, *st)));
        for (path, state) in read {
            let old_keys: Vec<ObjectKey> = self
                .files
                .get(&path)
                .map(|f| f.specs.keys().cloned().collect())
                .unwrap_or_default();
            let new_keys: Vec<ObjectKey> = state.specs.keys().cloned().collect();
            note(
                self,
                &mut touched,
                old_keys.iter().chain(&new_keys).cloned().collect(),
            );
            for k in &old_keys {
                if let Some(d) = self.defs.get_mut(k) {
                    d.remove(&path);
                }
            }
            for k in new_keys {
                self.defs.entry(k).or_default().insert(path.clone());
            }
            self.files.insert(path, state);
        }
        let mut changes = Vec::new();
        for key in touched {
            if self.defs.get(&key).is_some_and(BTreeSet::is_empty) {
                self.defs.remove(&key);
            }
            // A key defined in several files: the first path wins, the others are reported.
            self.duplicates.remove(&key);
            if let Some(paths) = self.defs.get(&key)
                && paths.len() > 1
            {
                let mut it = paths.iter();
                let first = it
                    .next()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let others: Vec<String> = it.map(|p| p.display().to_string()).collect();
                let mut p = Problem::file(
                    others.join(", "),
                    format!("already defined in {first}: ignored"),
                );
                p.object = key.to_string();
                self.duplicates.insert(key.clone(), p);
            }
            let now = self.effective(&key).cloned();
            if before.get(&key).cloned().flatten() != now {
                changes.push((key, now));
            }
        }
        let locations = changes
            .iter()
            .map(|(key, _)| (key.clone(), self.location(key)))
            .collect();
        Delta {
            changes,
            problems: self.problems(),
            noticed: None,
            locations,
            ..Delta::default()
        }
    }

    /// `file:line` of the version of `key` in force.
    fn location(&self, key: &ObjectKey) -> Option<String> {
        let path = self.defs.get(key)?.iter().next()?;
        let (line, _) = self.files.get(path)?.specs.get(key)?;
        Some(format!("{}:{line}", path.display()))
    }

    /// Every problem of the current files.
    pub fn problems(&self) -> Vec<Problem> {
        self.unreadable
            .iter()
            .cloned()
            .chain(self.listing.iter().cloned())
            .chain(self.files.values().flat_map(|f| f.problems.iter().cloned()))
            .chain(self.duplicates.values().cloned())
            .collect()
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

    fn svc_yaml(name: &str, ip: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: {port}\n"
        )
    }

    fn keys(d: &Delta) -> Vec<(String, bool)> {
        d.changes
            .iter()
            .map(|(k, v)| (k.to_string(), v.is_some()))
            .collect()
    }

    #[test]
    fn deltas_carry_only_what_changed() {
        let dir = std::env::temp_dir().join(format!("xlb-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a.yaml"), svc_yaml("a", "10.96.0.1", 80)).unwrap();
        fs::write(dir.join("b.yaml"), svc_yaml("b", "10.96.0.2", 80)).unwrap();
        let mut src = FileSource::new(&dir);
        let d = src.load();
        assert_eq!(
            keys(&d),
            vec![
                ("Service default/a".into(), true),
                ("Service default/b".into(), true)
            ]
        );
        // Nothing changed: nothing reported.
        assert!(src.load().changes.is_empty());
        // One file edited: only its object.
        fs::write(dir.join("b.yaml"), svc_yaml("b", "10.96.0.2", 81)).unwrap();
        assert_eq!(keys(&src.load()), vec![("Service default/b".into(), true)]);
        // An object made invalid keeps its last good version: no change, one problem.
        fs::write(dir.join("b.yaml"), svc_yaml("b", "10.96.0.2", 0)).unwrap();
        let d = src.load();
        assert!(d.changes.is_empty());
        assert_eq!(d.problems.len(), 1);
        assert!(
            d.problems[0]
                .message
                .contains("keeping its last good version")
        );
        // The same object in a second file: the first file keeps it, the second is reported.
        fs::write(dir.join("c.yaml"), svc_yaml("a", "10.96.0.9", 80)).unwrap();
        let d = src.load();
        assert!(d.changes.is_empty(), "{:?}", keys(&d));
        assert!(
            d.problems
                .iter()
                .any(|p| p.message.contains("already defined in"))
        );
        // Removing the first definition hands the key to the second file.
        fs::remove_file(dir.join("a.yaml")).unwrap();
        let d = src.load();
        assert_eq!(keys(&d), vec![("Service default/a".into(), true)]);
        match &d.changes[0].1 {
            Some(Spec::Service(s)) => assert_eq!(s.cluster_ips[0].to_string(), "10.96.0.9"),
            other => panic!("{other:?}"),
        }
        fs::remove_file(dir.join("c.yaml")).unwrap();
        assert_eq!(keys(&src.load()), vec![("Service default/a".into(), false)]);
        let _ = fs::remove_dir_all(&dir);
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

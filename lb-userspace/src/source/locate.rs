//! The line of a field in a block-style YAML document, found by indentation: a problem about
//! `spec.ports[1].port` points at the line of that `port:`, not at the object's first line.
//! Flow collections (`[a, b]`, `{k: v}`) are located at the line that opens them.

/// One non-blank, non-comment line: its number in the document (0-based), indentation, and
/// content. A `- ` list item is a line of its own at the dash, followed by its content as a
/// virtual line two columns further in (so `- name: x` holds both the item and its first key).
#[derive(Clone, Copy, Debug)]
struct Line<'a> {
    n: usize,
    indent: usize,
    text: &'a str,
    item: bool,
}

fn lines(doc: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (n, raw) in doc.lines().enumerate() {
        let t = raw.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut indent = raw.len() - t.len();
        let mut text = t;
        // `- - x` and `- key: v`: each dash is an item, the rest its content.
        while let Some(rest) = text
            .strip_prefix("- ")
            .or(if text == "-" { Some("") } else { None })
        {
            out.push(Line {
                n,
                indent,
                text: "-",
                item: true,
            });
            let inner = rest.trim_start();
            indent += 2 + (rest.len() - inner.len());
            text = inner;
            if text.is_empty() {
                break;
            }
        }
        if !text.is_empty() {
            out.push(Line {
                n,
                indent,
                text,
                item: false,
            });
        }
    }
    out
}

/// A step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.ports[1].port` → `spec`, `ports`, `[1]`, `port`.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while !rest.is_empty() {
            let (i, after) = rest.split_once(']')?;
            out.push(Step::Index(i.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(out)
}

/// Whether `text` is the mapping entry `key:`.
fn is_key(text: &str, key: &str) -> bool {
    let unquoted = |k: &str| {
        text.strip_prefix(k).is_some_and(|r| {
            r.starts_with(':') && (r.len() == 1 || r[1..].starts_with([' ', '\t']))
        })
    };
    unquoted(key) || unquoted(&format!("\"{key}\"")) || unquoted(&format!("'{key}'"))
}

/// The 0-based line of `path` in `doc`, or `None` if it is not there as block YAML.
pub fn field_line(doc: &str, path: &str) -> Option<usize> {
    let ls = lines(doc);
    let steps = steps(path)?;
    // The lines of the node being searched: a slice of `ls` and its indentation.
    let (mut lo, mut hi) = (0usize, ls.len());
    let mut found = None;
    for step in steps {
        let indent = ls.get(lo..hi)?.first()?.indent;
        // The children of the node: lines at its indentation.
        let at_level = |i: &usize| ls[*i].indent == indent;
        let start = match step {
            Step::Key(k) => {
                (lo..hi).find(|i| at_level(i) && !ls[*i].item && is_key(ls[*i].text, k))?
            }
            Step::Index(idx) => (lo..hi).filter(|i| at_level(i) && ls[*i].item).nth(idx)?,
        };
        // The node ends at the next line of its parent's level: for a key, the next key (a
        // list value may sit at the key's own indentation: `ports:` then `- port: 80`); for an
        // item, the next item or key.
        let end = (start + 1..hi)
            .find(|i| {
                let l = &ls[*i];
                l.indent < indent
                    || (l.indent == indent && (matches!(step, Step::Index(_)) || !l.item))
            })
            .unwrap_or(hi);
        found = Some(ls[start].n);
        lo = start + 1;
        hi = end;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
  - name: dns
    port: 99999 # wrong
    protocol: UDP
  selector: {app: web}
";

    #[test]
    fn fields_are_found_at_their_own_line() {
        assert_eq!(field_line(DOC, "metadata.name"), Some(3));
        assert_eq!(field_line(DOC, "spec.clusterIP"), Some(5));
        assert_eq!(field_line(DOC, "spec.ports[0]"), Some(7));
        assert_eq!(field_line(DOC, "spec.ports[1].port"), Some(10));
        assert_eq!(field_line(DOC, "spec.ports[1].protocol"), Some(11));
        assert_eq!(field_line(DOC, "spec.selector"), Some(12));
        assert_eq!(field_line(DOC, "spec.ports[2].port"), None);
        assert_eq!(field_line(DOC, "spec.nothere"), None);
    }

    #[test]
    fn indented_lists_and_nested_items_are_followed() {
        let doc = "\
endpoints:
    - addresses:
        - 10.0.0.1
        - 10.0.0.300
      conditions:
        ready: true
    - addresses: [10.0.0.3]
      zone: a
ports:
- port: 80
";
        assert_eq!(field_line(doc, "endpoints[0].addresses[1]"), Some(3));
        assert_eq!(field_line(doc, "endpoints[0].conditions.ready"), Some(5));
        assert_eq!(field_line(doc, "endpoints[1].addresses"), Some(6));
        assert_eq!(field_line(doc, "endpoints[1].zone"), Some(7));
        assert_eq!(field_line(doc, "ports[0].port"), Some(9));
    }
}

//! Plain aligned text tables for the CLI.

/// How a table is printed: `-o wide` shows the extra columns, `--no-headers` drops the title
/// row (for `awk`/`cut` pipelines, as kubectl's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Show the columns added with [`Table::wide`].
    pub wide: bool,
    /// Print the title row.
    pub headers: bool,
}

impl Default for Style {
    fn default() -> Self {
        Self {
            wide: false,
            headers: true,
        }
    }
}

/// A table: a header row and data rows, printed with columns padded to their widest cell.
#[derive(Default)]
pub struct Table {
    /// Header first, then the data rows; every row holds the wide columns too.
    rows: Vec<Vec<String>>,
    /// Columns shown without `-o wide` (the rest are wide-only).
    narrow: usize,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| (*s).to_owned()).collect()],
            narrow: header.len(),
        }
    }

    /// Adds columns shown only with `-o wide`; rows give their cells after the others.
    #[must_use]
    pub fn wide(mut self, header: &[&str]) -> Self {
        self.rows[0].extend(header.iter().map(|s| (*s).to_owned()));
        self
    }

    /// Appends a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table.
    pub fn render(&self, style: Style) -> String {
        let shown = |r: &[String]| -> usize {
            if style.wide {
                r.len()
            } else {
                r.len().min(self.narrow)
            }
        };
        let rows = &self.rows[usize::from(!style.headers)..];
        let cols = rows.iter().map(|r| shown(r)).max().unwrap_or(0);
        let mut width = vec![0usize; cols];
        for r in rows {
            for (i, c) in r[..shown(r)].iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in rows {
            let cells = &r[..shown(r)];
            let mut line = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{c:<w$}  ", w = width[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_columns_and_headers_follow_the_style() {
        let mut t = Table::new(&["A", "B"]).wide(&["C"]);
        t.row(vec!["1".into(), "22".into(), "333".into()]);
        assert_eq!(t.render(Style::default()), "A  B\n1  22\n");
        let wide = Style {
            wide: true,
            headers: true,
        };
        assert_eq!(t.render(wide), "A  B   C\n1  22  333\n");
        let bare = Style {
            wide: false,
            headers: false,
        };
        assert_eq!(t.render(bare), "1  22\n");
    }
}

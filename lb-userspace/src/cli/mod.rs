//! CLI subcommands. Each gathers data (from pinned maps or files) separately from rendering,
//! and renders a table (`-o wide`: every column) or a JSON/YAML document.

pub mod check;
pub mod explain;
pub mod inspect;
pub mod monitor;
pub mod service;
pub mod status;
pub mod table;

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text for humans.
    #[default]
    Table,
    /// The table with every column (bpftool keys, ids, sizes).
    Wide,
    /// JSON for tools.
    Json,
    /// YAML, the same document as JSON.
    Yaml,
}

/// What a read command prints and how: the output format and whether tables have titles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// `-o`.
    pub output: Output,
    /// Not `--no-headers`.
    pub headers: bool,
}

impl From<Output> for Format {
    fn from(output: Output) -> Self {
        Self {
            output,
            headers: true,
        }
    }
}

impl Format {
    /// The table style of this format.
    pub fn style(self) -> table::Style {
        table::Style {
            wide: self.output == Output::Wide,
            headers: self.headers,
        }
    }

    /// Whether this format is a document (JSON or YAML) rather than text.
    pub fn is_document(self) -> bool {
        matches!(self.output, Output::Json | Output::Yaml)
    }

    /// `value` as a JSON or YAML document, or the text `text` renders.
    pub fn render<T: serde::Serialize>(
        self,
        value: &T,
        text: impl FnOnce(table::Style) -> String,
    ) -> anyhow::Result<String> {
        Ok(match self.output {
            Output::Json => serde_json::to_string_pretty(value)? + "\n",
            Output::Yaml => serde_yaml_ng::to_string(value)?,
            Output::Table | Output::Wide => text(self.style()),
        })
    }
}

/// `xlb version -o json|yaml`.
#[derive(serde::Serialize, Debug)]
pub struct BuildInfo {
    /// Crate release.
    pub version: &'static str,
    /// Commit built from (empty outside a git checkout).
    pub commit: &'static str,
    /// Pinned-map layout version this build reads and writes.
    pub layout_version: u32,
}

impl BuildInfo {
    /// This binary.
    pub fn this() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            commit: option_env!("XLB_COMMIT").unwrap_or(""),
            layout_version: lb_common::LAYOUT_VERSION,
        }
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (", self.version)?;
        if !self.commit.is_empty() {
            write!(f, "commit {}, ", self.commit)?;
        }
        write!(f, "map layout v{})", self.layout_version)
    }
}

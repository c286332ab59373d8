//! CLI subcommands. Each gathers data (from pinned maps or files) separately from rendering,
//! and renders a table or, with `-o json`, JSON.

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
    /// JSON for tools.
    Json,
}

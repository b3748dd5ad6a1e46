//! `edgellm bench`'s machinery, apart from its flags (`commands/bench.rs`): running one
//! configuration and timing it (`measure`), statistics (`stats`), the JSON record and comparing
//! two files (`record`), the table and Markdown output (`report`) and the SVG chart (`plot`).

pub mod measure;
pub mod plot;
pub mod record;
pub mod report;
pub mod stats;

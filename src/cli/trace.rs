//! placeholder until the trace CLI lands
#[derive(clap::Subcommand)]
pub enum TraceCmd {}
pub fn run(c: TraceCmd) -> anyhow::Result<()> {
    match c {}
}

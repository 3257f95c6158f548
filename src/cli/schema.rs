//! `schema`: the policy file's JSON Schema on stdout, for editors (taplo, Even Better TOML) and
//! CI; generated from the types the parser reads the file into (`config::schema`).

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct SchemaArgs {}

pub fn run(_: SchemaArgs) -> Result<ExitCode, ExitCode> {
    println!("{}", crate::config::schema::policy_schema_json());
    Ok(ExitCode::SUCCESS)
}

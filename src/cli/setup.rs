//! The tools that prepare a run: `overlayd keygen` writes the overlay key every host shares,
//! `overlayd check-topology` checks a topology file before the bootstrapper serves it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::DEFAULT_KEY_FILE;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write it.
    #[arg(long, default_value = DEFAULT_KEY_FILE)]
    pub out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

impl KeygenArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        crate::keyfile::write_new(&self.out, self.force)
            .with_context(|| format!("cannot write key file '{}'", self.out.display()))?;
        println!(
            "wrote a new overlay key to {} (mode 0600); copy it to every overlay host",
            self.out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Args, Debug)]
pub struct CheckTopologyArgs {
    /// The topology JSON file.
    pub file: PathBuf,
}

impl CheckTopologyArgs {
    /// Prints the findings; exit status 1 when the file has errors.
    pub fn run(self) -> ExitCode {
        if crate::topology::run_check(&self.file, &mut std::io::stdout()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

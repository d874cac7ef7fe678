//! Role wiring: what each `--role` runs.
pub mod bootstrapper;

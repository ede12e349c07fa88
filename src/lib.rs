//! firecrest-ci: run a CI job on an HPC cluster through FirecREST v2 (or local
//! Slurm, or this machine) and make CI's red or green tell the truth.
//!
//! Data flows one way through [`run`]: configuration, workspace packing,
//! upload, batch script, submission, watching and log streaming, exit-state
//! mapping, artifacts, cleanup. Each step is a module of its own.

pub mod backend;
pub mod check;
pub mod ci;
pub mod config;
pub mod firecrest;
pub mod handback;
pub mod job;
pub mod outcome;
pub mod placement;
pub mod progress;
pub mod run;
pub mod script;
pub mod secret;
pub mod transfer;
pub mod workspace;

/// The reserved-option table's old path; it lives in [`config::slurm`].
pub use config::slurm as sbatch;

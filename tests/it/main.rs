//! Integration tests: the real firecrest-ci code against a stateful FirecREST
//! double (`fake`), which has self-tests of its own in `fake_selftest`;
//! whole runs through the `local` backend (`local`) and a real Slurm (`slurm`);
//! artifacts with unsafe entries, both ways (`artifacts`); input mistakes
//! only the cluster sees, `check`, `cancel` and leftovers (`errors`).

mod artifacts;
mod bench;
mod errors;
mod fake;
mod fake_replay;
mod fake_selftest;
mod faults;
mod harness;
mod large_output;
mod lifecycle;
mod local;
mod messages;
mod signals;
mod slurm;

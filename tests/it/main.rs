//! Integration tests: the real firecrest-ci code against a stateful FirecREST
//! double (`fake`), which has self-tests of its own in `fake_selftest`;
//! whole runs through the `local` backend (`local`) and a real Slurm (`slurm`);
//! artifacts with unsafe entries, both ways (`artifacts`); the container
//! images, run as GitHub, GitLab and a plain `docker run` run them (`images`).

mod artifacts;
mod bench;
mod fake;
mod fake_replay;
mod fake_selftest;
mod faults;
mod harness;
mod images;
mod large_output;
mod lifecycle;
mod local;
mod signals;
mod slurm;

//! Integration tests: the real firecrest-ci code against a stateful FirecREST
//! double (`fake`), which has self-tests of its own in `fake_selftest`;
//! whole runs through the `local` backend (`local`) and a real Slurm (`slurm`),
//! with the rows both must pass in one table (`backend_rows`);
//! artifacts with unsafe entries, both ways (`artifacts`); a wrong or
//! unreachable FirecREST or token URL, named within seconds
//! (`first_contact`); input mistakes only the cluster sees, `check`,
//! `cancel` and leftovers (`errors`); bounded reads of large outputs
//! (`large_output`, `fake_replay`); cancel and time limit as Slurm signals
//! them (`signals`); what the CI log says, in order (`messages`); what the
//! job hands back to CI (`handback`); the container images, run as GitHub,
//! GitLab and a plain `docker run` run them (`images`); the workspace upload's
//! way, overlap and integrity (`upload_speed`). Below the whole runs: the
//! `local` and `slurm` backends through the `Backend` trait (`backends`),
//! the FirecREST client against recorded exchanges (`firecrest_client`),
//! and `action.yml` and the GitLab files against the input table
//! (`distribution`).

mod artifacts;
mod backend_rows;
mod backends;
mod bench;
mod distribution;
mod errors;
mod fake;
mod fake_replay;
mod fake_selftest;
mod faults;
mod firecrest_client;
mod first_contact;
mod handback;
mod harness;
mod images;
mod large_output;
mod lifecycle;
mod local;
mod messages;
mod request_ids;
mod retries;
mod signals;
mod slurm;
mod upload_speed;

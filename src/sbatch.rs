//! The `sbatch` options firecrest-ci sets itself or that have an input of
//! their own: one table, read by the input parser (which names the input to
//! use instead) and by the script renderer (the last line of defence), so
//! the two cannot disagree.

/// An `#SBATCH` option the tool sets itself, or that has an input of its own.
pub struct Reserved {
    /// The long name, without `--`.
    pub long: &'static str,
    pub short: Option<char>,
    /// What to use instead, as users read it.
    pub reason: &'static str,
}

/// Every reserved option, once: input parsing and the script renderer both
/// refuse these.
pub const RESERVED_OPTIONS: &[Reserved] = &[
    Reserved { long: "output", short: Some('o'), reason: "firecrest-ci sets the output file to stream the job's output; the local copy goes to log-file (FIRECREST_LOG_FILE)" },
    Reserved { long: "error", short: Some('e'), reason: "firecrest-ci sets the error file; use separate-stderr (FIRECREST_SEPARATE_STDERR)" },
    Reserved { long: "job-name", short: Some('J'), reason: "use job-name (FIRECREST_JOB_NAME)" },
    Reserved { long: "chdir", short: Some('D'), reason: "the job runs in its per-run directory; use remote-dir (FIRECREST_REMOTE_DIR) for its base" },
    Reserved { long: "wrap", short: None, reason: "firecrest-ci writes the batch script; use run (FIRECREST_RUN) or script (FIRECREST_SCRIPT)" },
    Reserved { long: "export", short: None, reason: "firecrest-ci sets the job's environment; use env-vars (FIRECREST_ENV_VARS)" },
    Reserved { long: "export-file", short: None, reason: "firecrest-ci sets the job's environment; use env-vars (FIRECREST_ENV_VARS)" },
    Reserved { long: "dependency", short: Some('d'), reason: "firecrest-ci sets dependencies itself (staged uploads) and a foreign one could keep the job pending forever; order CI jobs instead" },
    Reserved { long: "array", short: Some('a'), reason: "firecrest-ci watches one job, not a job array" },
    Reserved { long: "wait", short: Some('W'), reason: "firecrest-ci waits for the job itself" },
    Reserved { long: "hold", short: Some('H'), reason: "a held job never starts and the run would wait forever" },
    Reserved { long: "parsable", short: None, reason: "firecrest-ci reads sbatch's reply itself" },
    Reserved { long: "test-only", short: None, reason: "the job would never run; use dry-run (FIRECREST_DRY_RUN)" },
    Reserved { long: "open-mode", short: None, reason: "firecrest-ci reads the output file by byte offset and needs it fresh" },
    Reserved { long: "account", short: Some('A'), reason: "use account (FIRECREST_ACCOUNT)" },
    Reserved { long: "partition", short: Some('p'), reason: "use partition (FIRECREST_PARTITION)" },
    Reserved { long: "reservation", short: None, reason: "use reservation (FIRECREST_RESERVATION)" },
    Reserved { long: "constraint", short: Some('C'), reason: "use constraint (FIRECREST_CONSTRAINT)" },
    Reserved { long: "time", short: Some('t'), reason: "use time-limit (FIRECREST_TIME_LIMIT)" },
    Reserved { long: "nodes", short: Some('N'), reason: "use nodes (FIRECREST_NODES)" },
    Reserved { long: "ntasks", short: Some('n'), reason: "use ntasks (FIRECREST_NTASKS)" },
    Reserved { long: "gpus", short: Some('G'), reason: "use gpus (FIRECREST_GPUS)" },
];

/// The reserved option a long name means; sbatch accepts any unambiguous
/// prefix (`--out` is `--output`), so every prefix counts.
pub fn reserved_long(name: &str) -> Option<&'static Reserved> {
    if name.is_empty() {
        return None;
    }
    RESERVED_OPTIONS.iter().find(|r| r.long.starts_with(name))
}

/// The reserved option a short letter means.
pub fn reserved_short(letter: char) -> Option<&'static Reserved> {
    RESERVED_OPTIONS.iter().find(|r| r.short == Some(letter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_prefixes_and_letters_find_their_option() {
        assert_eq!(reserved_long("output").map(|r| r.long), Some("output"));
        assert_eq!(reserved_long("out").map(|r| r.long), Some("output"));
        assert_eq!(
            reserved_long("export-file").map(|r| r.long),
            Some("export-file")
        );
        assert_eq!(reserved_short('t').map(|r| r.long), Some("time"));
        assert!(reserved_long("mem").is_none());
        assert!(reserved_long("").is_none());
        assert!(reserved_short('c').is_none());
    }
}

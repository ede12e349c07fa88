//! The rows of whole runs that the `local` and the `slurm` backend must both
//! pass, in one table: each row is a job's commands and inputs and what the
//! run must show (exit code, the README's row for it, the job's lines, the
//! artifacts brought back). `local` and `slurm` each say how they set a run
//! up, how they report a job's state and what "nothing left" means for them
//! (a [`Way`]), and `backend_rows!` makes one `#[test]` per row in each, so
//! `local::exit_three_passes_the_code_through` and its `slurm::` twin pass,
//! fail and filter on their own. Rows only one backend has stay in its module.

use std::time::Duration;

use firecrest_ci::outcome::codes;

use crate::harness::{readme_code, readme_exit_code, Outcome, Setup};

/// How one backend runs the rows.
pub(crate) trait Way {
    /// Bound for a short run on this backend.
    const LIMIT: Duration;

    /// True (after printing why) when the backend cannot run here.
    fn skipped(test: &str) -> bool;

    /// A run of `run` with a unique job name; returns the setup and the name.
    fn setup(tag: &str, run: &str) -> (Setup, String);

    /// The run reported the job's state as the row expects.
    fn assert_state(out: &Outcome, name: &str, row: &Row);

    /// No job, process or run directory of the run is left.
    fn assert_nothing_left(setup: &Setup, name: &str);
}

/// Where the README's exit-code table states the row's code.
pub(crate) enum Readme {
    /// The row `meaning` gives the code the run must exit with.
    Code(&'static str),
    /// The row `meaning` shows this text (such as `N`) instead of a number.
    Written(&'static str, &'static str),
}

/// What the job's own output must be, between the prologue's and the
/// epilogue's lines.
pub(crate) enum Shown {
    /// Not checked by the row.
    Unchecked,
    /// Exactly these lines in the CI log.
    Lines(&'static [&'static str]),
    /// Exactly these lines in the CI log and in the local log file.
    LinesAlsoInLog(&'static [&'static str]),
    /// [`SPLIT_EXPECTED`], each line once and in order, in both (see
    /// [`assert_streamed_once_in_order`]).
    SplitOnceInOrder,
}

/// One row: a job and what its run must show on every backend.
pub(crate) struct Row {
    /// Prefix of the job's unique name.
    pub tag: &'static str,
    /// The job's commands (`FIRECREST_RUN`).
    pub run: &'static str,
    /// Inputs set on top of the backend's setup.
    pub env: &'static [(&'static str, &'static str)],
    /// The README's row for the exit code.
    pub readme: Readme,
    /// The exit code of the run.
    pub code: i32,
    /// The job's own output.
    pub shown: Shown,
    /// Files the job writes into the workspace that must come back, with
    /// their contents.
    pub artifacts: &'static [(&'static str, &'static str)],
    /// The state the tool reports for the job (checked the backend's way).
    pub state: Option<&'static str>,
    /// Slurm's own final state of the job, as `scontrol` shows it (only a
    /// backend with a scheduler to ask checks it).
    pub scheduler_state: Option<&'static str>,
}

/// Success: the output streams, lands in the log file, and nothing is left.
pub(crate) const EXIT_ZERO: Row = Row {
    tag: "ok",
    run: "echo first line from the job\ncat hello.txt\necho to-stderr >&2",
    env: &[],
    readme: Readme::Code("success"),
    code: codes::SUCCESS,
    shown: Shown::LinesAlsoInLog(&[
        "first line from the job",
        "hello from the workspace",
        "to-stderr",
    ]),
    artifacts: &[],
    state: Some("COMPLETED"),
    scheduler_state: None,
};

/// The commands' own exit code is the run's.
pub(crate) const EXIT_THREE: Row = Row {
    tag: "rc3",
    run: "echo before\nexit 3\necho never",
    env: &[],
    readme: Readme::Written("the commands' own exit code", "N"),
    code: 3,
    shown: Shown::Lines(&["before"]),
    artifacts: &[],
    state: Some("FAILED"),
    scheduler_state: Some("FAILED"),
};

/// A failed job still brings its artifacts back (non-ASCII names too).
pub(crate) const EXIT_FIVE: Row = Row {
    tag: "rc5",
    run: "mkdir -p out/sub\necho result-data > out/result.txt\nprintf 'grüße ✓\\n' > out/sub/ü.txt\nexit 5",
    env: &[("FIRECREST_ARTIFACTS", "out/")],
    readme: Readme::Written("the commands' own exit code", "N"),
    code: 5,
    shown: Shown::Unchecked,
    artifacts: &[
        ("out/result.txt", "result-data\n"),
        ("out/sub/ü.txt", "grüße ✓\n"),
    ],
    state: None,
    scheduler_state: None,
};

/// Characters split across writes and reads arrive whole, each line once.
pub(crate) const SPLIT_MULTIBYTE: Row = Row {
    tag: "utf8",
    run: SPLIT_WRITER,
    env: &[("FIRECREST_LOG_INTERVAL", "300ms")],
    readme: Readme::Code("success"),
    code: codes::SUCCESS,
    shown: Shown::SplitOnceInOrder,
    artifacts: &[],
    state: None,
    scheduler_state: None,
};

/// One `#[test]` per row for the backend `$way` (a [`Way`]), named after
/// the row; used once in each backend's module.
macro_rules! backend_rows {
    ($way:ty) => {
        $crate::backend_rows::backend_rows!($way;
            exit_zero_streams_the_output_writes_the_log_and_cleans_up = EXIT_ZERO,
            exit_three_passes_the_code_through = EXIT_THREE,
            exit_five_still_brings_the_artifacts_back = EXIT_FIVE,
            multibyte_output_split_across_writes_streams_exactly_once = SPLIT_MULTIBYTE,
        );
    };
    ($way:ty; $($test:ident = $row:ident,)+) => {$(
        #[test]
        fn $test() {
            $crate::backend_rows::run::<$way>(stringify!($test), &$crate::backend_rows::$row);
        }
    )+};
}
pub(crate) use backend_rows;

/// Runs `row` through the backend `W` and checks everything the row says.
pub(crate) fn run<W: Way>(test: &str, row: &Row) {
    if W::skipped(test) {
        return;
    }
    let (mut setup, name) = W::setup(row.tag, row.run);
    for (var, value) in row.env {
        setup.set(var, *value);
    }
    let out = setup.run(W::LIMIT);
    match row.readme {
        Readme::Code(meaning) => assert_eq!(readme_exit_code(meaning), row.code),
        Readme::Written(meaning, text) => assert_eq!(readme_code(meaning), text),
    }
    assert_eq!(out.code, row.code, "{}", out.both());
    match row.shown {
        Shown::Unchecked => {}
        Shown::Lines(lines) => assert_eq!(job_lines(&out.stdout), lines, "{}", out.both()),
        Shown::LinesAlsoInLog(lines) => {
            assert_eq!(job_lines(&out.stdout), lines, "{}", out.both());
            assert_eq!(job_lines(&log_file(&setup)), lines);
        }
        Shown::SplitOnceInOrder => assert_streamed_once_in_order(&out, &log_file(&setup)),
    }
    for (path, content) in row.artifacts {
        let back = std::fs::read_to_string(setup.path().join(path))
            .unwrap_or_else(|e| panic!("artifact {path}: {e}\n{}", out.both()));
        assert_eq!(back, *content, "{path}\n{}", out.both());
    }
    W::assert_state(&out, &name, row);
    W::assert_nothing_left(&setup, &name);
}

/// The job's own lines, between the prologue's "workspace ready" and the
/// "commands exited" line the batch script prints.
pub(crate) fn job_lines(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| !l.starts_with("firecrest-ci: workspace ready"))
        .skip(1)
        .take_while(|l| !l.starts_with("firecrest-ci: commands exited"))
        .collect()
}

/// The local log file the run wrote into the workspace.
pub(crate) fn log_file(setup: &Setup) -> String {
    std::fs::read_to_string(setup.path().join("firecrest-ci.log")).expect("the local log file")
}

/// Writes characters of 2, 3 and 4 bytes split across writes a second apart,
/// so the tool's reads land inside them.
pub const SPLIT_WRITER: &str = r"printf 'A1 h\xc3'; sleep 1.2
printf '\xa9llo w\xc3\xb6rld \xe2'; sleep 1.2
printf '\x9c\x93 \xe6\x97'; sleep 1.2
printf '\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f'; sleep 1.2
printf '\x9a\x80\n'
echo 'B2 Grüße, こんにちは, 👋'
printf 'C3 no newline at the end: ✓'";

/// What [`SPLIT_WRITER`] prints, line by line.
pub const SPLIT_EXPECTED: [&str; 3] = [
    "A1 héllo wörld ✓ 日本語 🚀",
    "B2 Grüße, こんにちは, 👋",
    "C3 no newline at the end: ✓",
];

/// The job's output between the prologue's and the epilogue's lines is
/// exactly [`SPLIT_EXPECTED`], in the CI log and in the local log file, each
/// line once (the last one, without a newline, runs into the epilogue's).
pub fn assert_streamed_once_in_order(out: &Outcome, log: &str) {
    for text in [out.stdout.as_str(), log] {
        assert!(
            !text.contains('\u{fffd}'),
            "a character was mangled\n{text}"
        );
        let start = text
            .find("firecrest-ci: workspace ready")
            .expect("prologue line");
        let body = &text[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let end = body
            .find("firecrest-ci: commands exited")
            .expect("end line");
        let body = body[..end].trim_end_matches('\n');
        assert_eq!(body.lines().collect::<Vec<_>>(), SPLIT_EXPECTED, "{text}");
        for line in SPLIT_EXPECTED {
            assert_eq!(text.matches(line).count(), 1, "{line:?} not once\n{text}");
        }
    }
}

//! The second phase: the parsed inputs held against the file system (the
//! workspace, the script, the log file's directory). Its problems join the
//! first phase's in the same list.

use std::path::{Path, PathBuf};

use super::inputs::{self, Inputs};
use super::values::{shown, Problems};
use super::UserCommand;

/// The local copy of the job's output, in the workspace unless given.
pub(super) const DEFAULT_LOG_FILE: &str = "firecrest-ci.log";

/// Where the workspace comes from, as the first phase read it.
pub(super) enum WorkspaceInput<'a> {
    /// A directory from `var` (the input or a platform variable), one line.
    Given { var: &'static str, value: &'a str },
    /// Nothing set: the current directory.
    CurrentDir,
}

/// Phase one of the workspace: the input, else GitHub's or GitLab's
/// variable, else the current directory; `None` after a problem.
pub(super) fn workspace_input<'a>(
    raw: &Inputs<'a>,
    p: &mut Problems,
) -> Option<WorkspaceInput<'a>> {
    let (var, value): (&'static str, Option<&'a str>) =
        if let Some(value) = raw.get(&inputs::WORKSPACE) {
            (inputs::WORKSPACE.env, Some(value))
        } else if let Some(dir) = raw.platform("GITHUB_WORKSPACE") {
            ("GITHUB_WORKSPACE", Some(dir))
        } else if let Some(dir) = raw.platform("CI_PROJECT_DIR") {
            ("CI_PROJECT_DIR", Some(dir))
        } else {
            return Some(WorkspaceInput::CurrentDir);
        };
    let value = p.one_line(var, value)?;
    Some(WorkspaceInput::Given { var, value })
}

/// The workspace as an absolute (canonical) path of an existing directory.
pub(super) fn workspace(
    input: WorkspaceInput<'_>,
    cwd: &Path,
    p: &mut Problems,
) -> Option<PathBuf> {
    let (var, value) = match input {
        WorkspaceInput::Given { var, value } => (var, value),
        WorkspaceInput::CurrentDir => {
            return match cwd.canonicalize() {
                Ok(dir) if dir.is_dir() => Some(dir),
                _ => {
                    p.add(
                        &[inputs::WORKSPACE.env],
                        format!(
                            "is not set and the current directory {} is not usable; set it to the directory to pack",
                            shown(&cwd.to_string_lossy())
                        ),
                    );
                    None
                }
            };
        }
    };
    let path = cwd.join(value);
    match path.canonicalize() {
        Ok(dir) if dir.is_dir() => Some(dir),
        Ok(_) => {
            p.add(
                &[var],
                format!(
                    "must be a directory to pack; {} is not a directory",
                    shown(value)
                ),
            );
            None
        }
        Err(_) => {
            p.add(
                &[var],
                format!(
                    "must be an existing directory to pack; {} does not exist",
                    shown(value)
                ),
            );
            None
        }
    }
}

/// The script, once it is known to be a regular file inside the workspace.
pub(super) fn script(workspace: &Path, path: String, p: &mut Problems) -> Option<UserCommand> {
    match script_inside(workspace, &path) {
        Ok(()) => Some(UserCommand::ScriptFile(path)),
        Err(why) => {
            p.add(&[inputs::SCRIPT.env], format!("{why}: {}", shown(&path)));
            None
        }
    }
}

fn script_inside(workspace: &Path, path: &str) -> Result<(), &'static str> {
    let full = workspace.join(path);
    let real = full
        .canonicalize()
        .map_err(|_| "is not a file in the workspace")?;
    if !real.starts_with(workspace) {
        return Err("leads outside the workspace (through a symbolic link)");
    }
    if !real.is_file() {
        return Err("is not a regular file in the workspace");
    }
    Ok(())
}

/// The log file: given (relative to the workspace) or the default, in an
/// existing directory. `raw` is the input as given.
pub(super) fn log_file(raw: Option<&str>, workspace: &Path, p: &mut Problems) -> Option<PathBuf> {
    const VAR: &str = inputs::LOG_FILE.env;
    let file = match raw {
        None => return Some(workspace.join(DEFAULT_LOG_FILE)),
        Some(value) => workspace.join(p.one_line(VAR, Some(value))?),
    };
    let parent_is_dir = file.parent().is_some_and(Path::is_dir);
    if !parent_is_dir || file.is_dir() {
        p.add(
            &[VAR],
            format!(
                "must be a file in an existing directory (relative paths start at the workspace); {} is not",
                shown(&file.to_string_lossy())
            ),
        );
        return None;
    }
    Some(file)
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn workspace_comes_from_the_platform_or_the_current_directory() {
        let fx = fixture();
        std::fs::create_dir(fx.ws.join("sub")).unwrap();
        std::fs::write(fx.ws.join("file"), "").unwrap();
        let sub = fx.ws.join("sub");
        let ws = |pairs: &[(&str, &str)]| {
            let mut env = map(pairs);
            env.insert("FIRECREST_RUN".into(), "true".into());
            env.insert("FIRECREST_BACKEND".into(), "local".into());
            Config::from_env(&env, &fx.ws, &CliFlags::default())
        };
        let sub_str = sub.to_str().unwrap();
        assert_eq!(ws(&[]).unwrap().workspace, fx.ws);
        assert_eq!(ws(&[("CI_PROJECT_DIR", sub_str)]).unwrap().workspace, sub);
        assert_eq!(
            ws(&[
                ("GITHUB_WORKSPACE", sub_str),
                ("CI_PROJECT_DIR", "/nonexistent")
            ])
            .unwrap()
            .workspace,
            sub
        );
        assert_eq!(
            ws(&[
                ("FIRECREST_WORKSPACE", "sub"),
                ("GITHUB_WORKSPACE", "/nonexistent")
            ])
            .unwrap()
            .workspace,
            sub,
            "FIRECREST_WORKSPACE wins and is relative to the current directory"
        );
        assert_eq!(
            ws(&[("FIRECREST_WORKSPACE", "sub/../sub/")])
                .unwrap()
                .workspace,
            sub
        );
        assert_eq!(ws(&[]).unwrap().log_file, fx.ws.join("firecrest-ci.log"));

        for (var, value, why) in [
            ("FIRECREST_WORKSPACE", "missing", "does not exist"),
            ("FIRECREST_WORKSPACE", "file", "not a directory"),
            ("GITHUB_WORKSPACE", "/nonexistent/ws", "does not exist"),
            ("CI_PROJECT_DIR", "/nonexistent/ws", "does not exist"),
        ] {
            let errors = ws(&[(var, value)]).unwrap_err().problems;
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].variables, [var]);
            assert!(errors[0].message.contains(why), "{}", errors[0].message);
        }
        let env = map(&[("FIRECREST_RUN", "true"), ("FIRECREST_BACKEND", "local")]);
        let errors = Config::from_env(&env, &fx.ws.join("gone"), &CliFlags::default()).unwrap_err();
        assert_eq!(errors.problems[0].variables, ["FIRECREST_WORKSPACE"]);
        assert!(errors.problems[0].message.contains("current directory"));
    }

    #[test]
    fn log_file_is_relative_to_the_workspace() {
        let fx = fixture();
        std::fs::create_dir(fx.ws.join("logs")).unwrap();
        let other = tempfile::tempdir().unwrap();
        let other_file = other.path().join("job.log");
        let file = |v: &str| ok(&fx, &[("FIRECREST_LOG_FILE", v)]).log_file;
        assert_eq!(file("out.log"), fx.ws.join("out.log"));
        assert_eq!(file("logs/out.log"), fx.ws.join("logs/out.log"));
        assert_eq!(file(other_file.to_str().unwrap()), other_file);
        for bad in ["missing/out.log", "logs", "/nonexistent/dir/job.log"] {
            assert!(
                problem(&fx, "FIRECREST_LOG_FILE", bad).contains("existing directory"),
                "{bad}"
            );
        }
    }
}

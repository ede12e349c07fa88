//! Who this run is, from the CI platform's variables, and the slug that names
//! its job and directories.

use super::inputs::Inputs;

/// Who this run is, from the CI platform: names the job and its directories
/// so that a lost submit reply can be resolved and runs never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// `[A-Za-z0-9._-]`, at most 80 characters, e.g. `org-repo-123-1-build`.
    pub slug: String,
    /// For people, e.g. `org/repo run 123 attempt 1 job build`.
    pub description: String,
    /// `github`, `gitlab` or `local`.
    pub platform: &'static str,
}

impl RunIdentity {
    /// From GitHub's or GitLab's run variables; `local` elsewhere.
    pub(super) fn from_env(raw: &Inputs) -> RunIdentity {
        let var = |name| raw.platform(name);
        if let (Some(repo), Some(run)) = (var("GITHUB_REPOSITORY"), var("GITHUB_RUN_ID")) {
            let attempt = var("GITHUB_RUN_ATTEMPT").unwrap_or("1");
            let job = var("GITHUB_JOB").unwrap_or("");
            let mut description = format!("{repo} run {run} attempt {attempt}");
            if !job.is_empty() {
                description.push_str(&format!(" job {job}"));
            }
            return RunIdentity {
                slug: slug(repo, &[run, attempt], job),
                description: printable(&description),
                platform: "github",
            };
        }
        if let (Some(project), Some(pipeline), Some(job)) = (
            var("CI_PROJECT_PATH"),
            var("CI_PIPELINE_ID"),
            var("CI_JOB_ID"),
        ) {
            return RunIdentity {
                slug: slug(project, &[pipeline, job], ""),
                description: printable(&format!("{project} pipeline {pipeline} job {job}")),
                platform: "gitlab",
            };
        }
        RunIdentity {
            slug: "local".to_string(),
            description: "local run".to_string(),
            platform: "local",
        }
    }
}

const SLUG_MAX: usize = 80;

/// `name-id-id-tail` in `[A-Za-z0-9._-]`, at most 80 characters; the ids are
/// kept whole (they make it unique) and the longer of name and tail shrinks.
fn slug(name: &str, ids: &[&str], tail: &str) -> String {
    let ids: Vec<String> = ids
        .iter()
        .map(|id| slug_part(id))
        .filter(|id| !id.is_empty())
        .collect();
    let (mut name, mut tail) = (slug_part(name), slug_part(tail));
    let fixed: usize = ids.iter().map(|id| id.len() + 1).sum();
    let budget = SLUG_MAX.saturating_sub(fixed + 1);
    while name.len() + tail.len() > budget {
        if name.len() >= tail.len() {
            name.pop();
        } else {
            tail.pop();
        }
    }
    let parts = std::iter::once(name)
        .chain(ids)
        .chain(std::iter::once(tail))
        .map(|part| part.trim_matches(['-', '.']).to_string())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>();
    let mut slug = parts.join("-");
    slug.truncate(SLUG_MAX);
    if slug.is_empty() {
        "local".to_string()
    } else {
        slug
    }
}

/// ASCII letters, digits, `.` and `_` kept; every other run of characters
/// becomes one `-`.
fn slug_part(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(['-', '.']).to_string()
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub(super) fn default_job_name(identity: &RunIdentity) -> String {
    let mut name = format!("fci-{}", identity.slug);
    name.truncate(128);
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::values::parse_job_name;

    #[test]
    fn run_identity_on_github() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("GITHUB_REPOSITORY", "org/repo"),
                ("GITHUB_RUN_ID", "123"),
                ("GITHUB_RUN_ATTEMPT", "1"),
                ("GITHUB_JOB", "build"),
            ],
        );
        assert_eq!(
            c.identity,
            RunIdentity {
                slug: "org-repo-123-1-build".into(),
                description: "org/repo run 123 attempt 1 job build".into(),
                platform: "github",
            }
        );
        assert_eq!(c.job_name, "fci-org-repo-123-1-build");
        let c = ok(
            &fx,
            &[("GITHUB_JOB", "build"), ("FIRECREST_JOB_NAME", "mine")],
        );
        assert_eq!(c.job_name, "mine");
    }

    #[test]
    fn run_identity_on_gitlab_and_elsewhere() {
        let fx = fixture();
        let c = ok(
            &fx,
            &[
                ("CI_PROJECT_PATH", "group/sub/project"),
                ("CI_PIPELINE_ID", "456"),
                ("CI_JOB_ID", "789"),
            ],
        );
        assert_eq!(c.identity.slug, "group-sub-project-456-789");
        assert_eq!(
            c.identity.description,
            "group/sub/project pipeline 456 job 789"
        );
        assert_eq!(c.identity.platform, "gitlab");

        let c = ok(
            &fx,
            &[
                ("CI_PROJECT_PATH", "group/project"),
                ("CI_PIPELINE_ID", "456"),
            ],
        );
        assert_eq!(c.identity.slug, "local", "incomplete platform variables");
        assert_eq!(c.identity.platform, "local");
    }

    #[test]
    fn slugs_are_safe_and_short() {
        let fx = fixture();
        let repo = format!("Org.Name/{}", "very-long-repository-name".repeat(5));
        let job = format!("job with spaces/and\nnewline {}", "x".repeat(60));
        let c = ok(
            &fx,
            &[
                ("GITHUB_REPOSITORY", &repo),
                ("GITHUB_RUN_ID", "9876543210"),
                ("GITHUB_RUN_ATTEMPT", "2"),
                ("GITHUB_JOB", &job),
            ],
        );
        let made = &c.identity.slug;
        assert!(made.len() <= 80, "{made}");
        assert!(
            made.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch)),
            "{made}"
        );
        assert!(made.starts_with("Org.Name-very-long"), "{made}");
        assert!(
            made.contains("-9876543210-2-job-with-spaces"),
            "ids kept whole: {made}"
        );
        assert!(!made.contains("--"), "{made}");
        assert!(!c.identity.description.contains('\n'));
        assert!(parse_job_name(&c.job_name).is_ok(), "{}", c.job_name);

        assert_eq!(slug_part("--.a b//c.-"), "a-b-c");
        assert_eq!(slug("", &["1"], ""), "1");
        assert_eq!(slug("///", &[], "***"), "local");
    }
}

//! The distribution files against the tool: `action.yml`, the GitLab include
//! template and the GitLab component must offer exactly the inputs of
//! `firecrest_ci::config::INPUTS`, with the same names and defaults, and
//! pass each to the `FIRECREST_*` variable the tool reads; and the binary,
//! started the way each platform starts it, must do what the platform
//! expects. A drift between the table and a YAML file fails here, not in a
//! user's pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use firecrest_ci::config::{InputSpec, INPUTS};
use serde_yaml::Value;

const OUTPUTS: &[&str] = &["job-id", "state", "exit-code", "remote-dir", "log-file"];
const IMAGE: &str = "ghcr.io/firecrest-ci/firecrest-ci";
/// Component inputs that place the GitLab job itself, not tool inputs.
const COMPONENT_ONLY: &[&str] = &["ci-job", "stage", "image"];
const CLASSIC: &str = "gitlab-template/firecrest-ci.gitlab-ci.yml";
const COMPONENT: &str = "gitlab-template/templates/firecrest-ci.yml";

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

fn yaml(text: &str, what: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("parse {what}: {e}"))
}

fn action() -> Value {
    yaml(&repo_file("action.yml"), "action.yml")
}

fn str_at<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: `{key}` is missing or not a string"))
}

fn map_keys(v: &Value, what: &str) -> Vec<String> {
    v.as_mapping()
        .unwrap_or_else(|| panic!("{what} is not a mapping"))
        .keys()
        .map(|k| {
            k.as_str()
                .unwrap_or_else(|| panic!("{what}: non-string key"))
                .to_owned()
        })
        .collect()
}

fn names(inputs: impl IntoIterator<Item = &'static InputSpec>) -> Vec<String> {
    inputs.into_iter().map(|i| i.name.to_owned()).collect()
}

/// The image reference must be `IMAGE:<crate version>[suffix]`, optionally
/// pinned by digest, so a release names one image everywhere.
fn assert_image_tag(reference: &str, suffix: &str, what: &str) {
    let without_digest = match reference.split_once("@sha256:") {
        Some((image, digest)) => {
            assert!(
                digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                "{what}: bad digest in {reference}"
            );
            image
        }
        None => reference,
    };
    let expected = format!("{IMAGE}:{}{suffix}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        without_digest, expected,
        "{what}: image tag is not the crate version"
    );
}

// --- GitHub action ----------------------------------------------------------

#[test]
fn action_inputs_are_the_input_table() {
    let action = action();
    let inputs = &action["inputs"];
    assert_eq!(
        map_keys(inputs, "action.yml inputs"),
        names(INPUTS),
        "action.yml inputs differ from config::INPUTS (names or order)"
    );
    for spec in INPUTS {
        let input = &inputs[spec.name];
        let what = format!("action.yml input {}", spec.name);
        let description = str_at(input, "description", &what);
        assert!(
            description
                .to_lowercase()
                .starts_with(&spec.description.to_lowercase()),
            "{what}: description does not start with the table's: {description:?}"
        );
        if spec.secret {
            assert!(
                input.get("default").is_none(),
                "{what}: a secret input must have no default"
            );
            assert!(
                description.contains("secrets."),
                "{what}: description must say to pass a secret"
            );
        } else {
            assert_eq!(
                str_at(input, "default", &what),
                spec.default,
                "{what}: default"
            );
            if spec.default.is_empty() && !spec.default_doc.is_empty() {
                assert!(
                    description.contains(spec.default_doc),
                    "{what}: description should name the derived default {:?}",
                    spec.default_doc
                );
            }
        }
        assert_eq!(
            input.get("required").and_then(Value::as_bool),
            Some(false),
            "{what}"
        );
    }
}

#[test]
fn action_maps_every_input_to_its_variable() {
    let action = action();
    let env = &action["runs"]["env"];
    let expected: Vec<String> = INPUTS.iter().map(|i| i.env.to_owned()).collect();
    assert_eq!(map_keys(env, "action.yml runs.env"), expected);
    for spec in INPUTS {
        assert_eq!(
            str_at(env, spec.env, "action.yml runs.env"),
            format!("${{{{ inputs.{} }}}}", spec.name),
            "runs.env.{} must pass input {} unchanged",
            spec.env,
            spec.name
        );
    }
}

#[test]
fn action_outputs_are_the_tools_outputs() {
    let action = action();
    assert_eq!(map_keys(&action["outputs"], "action.yml outputs"), OUTPUTS);
    for name in OUTPUTS {
        let description = str_at(&action["outputs"][*name], "description", name);
        assert!(
            !description.trim().is_empty(),
            "output {name} has no description"
        );
    }
}

#[test]
fn action_runs_the_prebuilt_image_of_this_version() {
    let action = action();
    assert_eq!(str_at(&action["runs"], "using", "runs"), "docker");
    let image = str_at(&action["runs"], "image", "runs");
    let reference = image
        .strip_prefix("docker://")
        .unwrap_or_else(|| panic!("runs.image must be a prebuilt docker:// image, not {image}"));
    assert_image_tag(reference, "", "action.yml");
    assert!(
        action["runs"].get("args").is_none(),
        "the image's entrypoint takes no args"
    );
    for key in ["name", "description", "author"] {
        assert!(!str_at(&action, key, "action.yml").is_empty());
    }
    assert!(action["branding"].get("icon").is_some() && action["branding"].get("color").is_some());
}

// --- GitLab -----------------------------------------------------------------

fn classic_job() -> Value {
    let doc = yaml(&repo_file(CLASSIC), CLASSIC);
    doc.get(".firecrest-ci")
        .unwrap_or_else(|| panic!("{CLASSIC}: no hidden job .firecrest-ci"))
        .clone()
}

/// The component's two documents: the `spec:` header and the jobs.
fn component() -> (Value, Value) {
    let text = repo_file(COMPONENT);
    let mut docs = text.split("\n---\n");
    let spec = yaml(docs.next().unwrap_or_default(), "component spec");
    let jobs = yaml(
        docs.next()
            .unwrap_or_else(|| panic!("{COMPONENT}: no `---` after the spec")),
        "component jobs",
    );
    assert!(
        docs.next().is_none(),
        "{COMPONENT}: more than two documents"
    );
    (spec, jobs)
}

fn component_job(jobs: &Value) -> Value {
    let keys = map_keys(jobs, "component jobs");
    assert_eq!(
        keys,
        ["$[[ inputs.ci-job ]]"],
        "the component adds one job named by ci-job"
    );
    jobs["$[[ inputs.ci-job ]]"].clone()
}

#[test]
fn component_inputs_are_the_non_secret_inputs() {
    let (spec, _) = component();
    let inputs = &spec["spec"]["inputs"];
    let mut expected: Vec<String> = COMPONENT_ONLY.iter().map(|s| (*s).to_owned()).collect();
    expected.extend(names(INPUTS.iter().filter(|i| !i.secret)));
    assert_eq!(map_keys(inputs, "component spec.inputs"), expected);

    for spec in INPUTS.iter().filter(|i| !i.secret) {
        let input = &inputs[spec.name];
        let what = format!("component input {}", spec.name);
        assert!(
            !str_at(input, "description", &what).trim().is_empty(),
            "{what}"
        );
        match spec.default {
            "true" | "false" => {
                assert_eq!(str_at(input, "type", &what), "boolean", "{what}");
                assert_eq!(
                    input.get("default").and_then(Value::as_bool),
                    Some(spec.default == "true"),
                    "{what}: default"
                );
            }
            default => {
                assert_eq!(str_at(input, "type", &what), "string", "{what}");
                assert_eq!(str_at(input, "default", &what), default, "{what}: default");
            }
        }
    }
    for name in COMPONENT_ONLY {
        let what = format!("component input {name}");
        assert!(
            !str_at(&inputs[*name], "default", &what).is_empty(),
            "{what}"
        );
    }
    assert_image_tag(
        str_at(&inputs["image"], "default", "image"),
        "-shell",
        "component",
    );
}

#[test]
fn component_maps_every_input_to_its_variable_and_no_secret() {
    let (_, jobs) = component();
    let job = component_job(&jobs);
    let vars = &job["variables"];
    let expected: Vec<String> = INPUTS
        .iter()
        .filter(|i| !i.secret)
        .map(|i| i.env.to_owned())
        .collect();
    assert_eq!(map_keys(vars, "component variables"), expected);
    for spec in INPUTS.iter().filter(|i| !i.secret) {
        let var = &vars[spec.env];
        let value = var
            .as_str()
            .or_else(|| var.get("value").and_then(Value::as_str))
            .unwrap_or_else(|| panic!("component variable {} has no value", spec.env));
        assert_eq!(
            value,
            format!("$[[ inputs.{} ]]", spec.name),
            "{}",
            spec.env
        );
    }
    // Shell code for the cluster must reach it with its $VARS untouched.
    assert_eq!(vars["FIRECREST_RUN"]["expand"].as_bool(), Some(false));
    assert_eq!(
        str_at(&job["image"], "name", "component image"),
        "$[[ inputs.image ]]"
    );
    assert_eq!(
        str_at(&job, "stage", "component job"),
        "$[[ inputs.stage ]]"
    );
}

#[test]
fn component_job_runs_like_the_include_template() {
    let (_, jobs) = component();
    let job = component_job(&jobs);
    let classic = classic_job();
    for key in ["script", "after_script", "artifacts"] {
        assert_eq!(
            job[key], classic[key],
            "component {key} differs from {CLASSIC}"
        );
    }
    assert_eq!(job["image"]["entrypoint"], classic["image"]["entrypoint"]);
}

#[test]
fn include_template_job_keeps_log_exports_outputs_and_cancels() {
    let job = classic_job();
    assert_image_tag(str_at(&job["image"], "name", CLASSIC), "-shell", CLASSIC);
    let entrypoint = job["image"]["entrypoint"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        entrypoint,
        [Value::from("")],
        "entrypoint must be cleared for script:"
    );

    let artifacts = &job["artifacts"];
    assert_eq!(str_at(artifacts, "when", "artifacts"), "always");
    assert!(artifacts["paths"]
        .as_sequence()
        .is_some_and(|p| p.contains(&Value::from("firecrest-ci.log"))));
    assert_eq!(
        str_at(&artifacts["reports"], "dotenv", "reports"),
        "firecrest-ci.env"
    );

    let script: Vec<&str> = job["script"]
        .as_sequence()
        .unwrap_or_else(|| panic!("script is not a list"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        script.iter().any(|l| l.contains("firecrest-ci &")),
        "script runs firecrest-ci"
    );
    assert!(script
        .iter()
        .any(|l| l.contains("rm -f \"$CI_PROJECT_DIR/firecrest-ci.env\"")));
    let after: String = job["after_script"]
        .as_sequence()
        .unwrap_or_else(|| panic!("after_script is not a list"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for needle in [
        "FIRECREST_JOB_ID=",
        "FIRECREST_JOB_STATE=",
        "firecrest-ci cancel \"$job_id\"",
    ] {
        assert!(after.contains(needle), "after_script lacks {needle:?}");
    }
    // Job variables override a pipeline's top-level ones: the template must
    // not shadow a user's settings with defaults of its own.
    if let Some(vars) = job.get("variables") {
        let set: Vec<String> = map_keys(vars, "template variables");
        assert!(
            set.iter().all(|v| !v.starts_with("FIRECREST_")),
            "the include template must not set FIRECREST_* variables: {set:?}"
        );
    }
}

#[test]
fn include_template_documents_every_variable_and_default() {
    let text = repo_file(CLASSIC);
    let documented: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#   FIRECREST_"))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let expected: BTreeSet<&str> = INPUTS
        .iter()
        .map(|i| i.env.trim_start_matches("FIRECREST_"))
        .collect();
    assert_eq!(
        documented.keys().copied().collect::<BTreeSet<_>>(),
        expected
    );
    for spec in INPUTS {
        let line = documented[spec.env.trim_start_matches("FIRECREST_")];
        assert!(line.contains(spec.description), "{}: description", spec.env);
        let default = if spec.default.is_empty() {
            spec.default_doc
        } else {
            spec.default
        };
        if spec.secret {
            assert!(
                line.contains("masked"),
                "{}: say it is a masked variable",
                spec.env
            );
        } else if !default.is_empty() {
            assert!(
                line.contains(&format!("(default: {default})")),
                "{}: default",
                spec.env
            );
        }
    }
}

// --- descriptions, generated from the input table ---------------------------
//
// The three YAML files say of each input what `INPUTS` says, in one form
// each. Their description lines are generated here: a test fails when a
// file differs from what the table makes, and
// `FIRECREST_CI_REGENERATE=1 cargo test --test it distribution::descriptions`
// rewrites the lines (nothing else in the files) from the table.

/// What `action.yml` and the GitLab component say of an input: the table's
/// line as a sentence, then its derived default, or for a secret how to
/// pass it. Each part once: a note the table already has is not added again.
fn yaml_description(spec: &InputSpec) -> String {
    let mut text = sentence(spec.description);
    if spec.secret {
        text.push_str(&format!(
            " Pass an encrypted secret, e.g. secrets.{}, never a literal value; no default.",
            spec.env
        ));
    } else if spec.default.is_empty() && !spec.default_doc.is_empty() {
        text.push_str(&format!(" Default: {}.", spec.default_doc));
    }
    text
}

/// The classic template's comment line for an input's variable.
fn template_comment(spec: &InputSpec) -> String {
    let default = if spec.default.is_empty() {
        spec.default_doc
    } else {
        spec.default
    };
    let mut text = spec.description.to_string();
    if spec.secret {
        text.push_str(" -- set it as a masked CI/CD variable");
    } else if !default.is_empty() {
        text.push_str(&format!(" (default: {default})"));
    }
    format!("#   {:<30}{text}", spec.env)
}

/// `text` with a capital first letter and one final period.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let first: String = chars
        .next()
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_default();
    let mut out = format!("{first}{}", chars.as_str());
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

fn yaml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `text` with the `description:` line of every input in the table made
/// from it. The inputs are the keys `<indent><name>:` of the mapping under
/// `<indent - 2>inputs:`; an input's description is its next
/// `<indent + 2>description:` line.
fn regenerate_yaml(text: &str, indent: usize) -> String {
    let key_prefix = " ".repeat(indent);
    let header = format!("{}inputs:", " ".repeat(indent - 2));
    let description_prefix = format!("{}description: ", " ".repeat(indent + 2));
    let mut in_inputs = false;
    let mut current: Option<&InputSpec> = None;
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches('\n');
        let depth = bare.len() - bare.trim_start().len();
        if bare == header {
            in_inputs = true;
        } else if !bare.trim().is_empty() && !bare.trim_start().starts_with('#') && depth < indent {
            in_inputs = false;
            current = None;
        }
        if !in_inputs {
            out.push_str(line);
            continue;
        }
        if let Some(key) = bare
            .strip_prefix(&key_prefix)
            .and_then(|rest| rest.strip_suffix(':'))
            .filter(|key| !key.starts_with(' '))
        {
            current = INPUTS.iter().find(|spec| spec.name == key);
        } else if let (Some(spec), true) = (current, bare.starts_with(&description_prefix)) {
            out.push_str(&description_prefix);
            out.push_str(&yaml_string(&yaml_description(spec)));
            out.push('\n');
            current = None;
            continue;
        }
        out.push_str(line);
    }
    out
}

/// `text` with each `#   FIRECREST_*` comment line made from the table.
fn regenerate_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let spec = line
            .strip_prefix("#   FIRECREST_")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|var| {
                INPUTS
                    .iter()
                    .find(|spec| spec.env.strip_prefix("FIRECREST_") == Some(var))
            });
        match spec {
            Some(spec) => {
                out.push_str(&template_comment(spec));
                out.push('\n');
            }
            None => out.push_str(line),
        }
    }
    out
}

#[test]
fn descriptions_are_generated_from_the_input_table() {
    let regenerate = std::env::var("FIRECREST_CI_REGENERATE").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (path, make) in [
        (
            "action.yml",
            (|t: &str| regenerate_yaml(t, 2)) as fn(&str) -> String,
        ),
        (COMPONENT, |t: &str| regenerate_yaml(t, 4)),
        (CLASSIC, regenerate_comments),
    ] {
        let text = repo_file(path);
        let expected = make(&text);
        if expected == text {
            continue;
        }
        if regenerate {
            let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            std::fs::write(&full, &expected).unwrap();
        } else {
            let first = text
                .lines()
                .zip(expected.lines())
                .find(|(have, want)| have != want)
                .map(|(have, want)| format!("\n  is:        {have}\n  generated: {want}"))
                .unwrap_or_default();
            stale.push(format!("{path}{first}"));
        }
    }
    assert!(
        stale.is_empty(),
        "descriptions differ from src/config/inputs.rs INPUTS; run \
         FIRECREST_CI_REGENERATE=1 cargo test --test it distribution::descriptions:\n{}",
        stale.join("\n")
    );
}

/// The first phrase of four or more words that `text` says twice, if any:
/// a note appended to a line that already had it.
fn repeated_phrase(text: &str) -> Option<String> {
    const WORDS: usize = 4;
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '-' && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut seen = BTreeSet::new();
    words
        .windows(WORDS)
        .map(|w| w.join(" "))
        .find(|phrase| !seen.insert(phrase.clone()))
}

#[test]
fn no_description_repeats_a_phrase() {
    assert_eq!(
        repeated_phrase("OAuth2 client id (with client-secret and token-url) (with client-secret and token-url)."),
        Some("with client-secret and token-url".to_string()),
        "the check finds the repetition it is for"
    );
    let mut descriptions: Vec<(String, String)> = Vec::new();
    let action = action();
    for section in ["inputs", "outputs"] {
        for name in map_keys(&action[section], section) {
            let what = format!("action.yml {section}.{name}");
            descriptions.push((
                what.clone(),
                str_at(&action[section][&name], "description", &what).into(),
            ));
        }
    }
    let (spec, _) = component();
    for name in map_keys(&spec["spec"]["inputs"], "component inputs") {
        let what = format!("{COMPONENT} input {name}");
        descriptions.push((
            what.clone(),
            str_at(&spec["spec"]["inputs"][&name], "description", &what).into(),
        ));
    }
    for line in repo_file(CLASSIC)
        .lines()
        .filter(|l| l.starts_with("#   FIRECREST_"))
    {
        descriptions.push((format!("{CLASSIC} comment"), line.to_string()));
    }
    for spec in INPUTS {
        descriptions.push((
            format!("INPUTS {}", spec.name),
            spec.description.to_string(),
        ));
    }
    let repeats: Vec<String> = descriptions
        .iter()
        .filter_map(|(what, text)| {
            repeated_phrase(text).map(|phrase| format!("{what}: {phrase:?} twice in {text:?}"))
        })
        .collect();
    assert!(repeats.is_empty(), "{}", repeats.join("\n"));
}

// --- the binary, started the way each platform starts it --------------------

const SECRET: &str = "s3cr3t-7a41c9-never-print";
const RUN_MARKER: &str = "echo dist-marker-5d2b";

struct Run {
    text: String,
    workspace: tempfile::TempDir,
}

/// The binary under test: the one cargo built for the tests, or the one
/// `FIRECREST_CI_BIN` names (`.ci/static-check` runs these tests on the
/// static release binary, as the platforms run it).
fn binary() -> std::path::PathBuf {
    std::env::var_os("FIRECREST_CI_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_firecrest-ci").into())
}

fn run_binary(env: &BTreeMap<String, String>, cwd: &Path) -> Output {
    let mut cmd = Command::new(binary());
    cmd.env_clear().envs(env).current_dir(cwd);
    cmd.output()
        .unwrap_or_else(|e| panic!("start firecrest-ci: {e}"))
}

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "a workspace to pack\n").unwrap();
    dir
}

fn finish(output: Output, workspace: tempfile::TempDir) -> Run {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "dry run failed:\n{text}");
    assert!(
        text.contains(RUN_MARKER),
        "the plan should show the job's commands:\n{text}"
    );
    assert!(!text.contains(SECRET), "the secret was printed:\n{text}");
    Run { text, workspace }
}

/// Every file the run left in the workspace: none may contain the secret.
fn assert_no_secret_in_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(SECRET),
                "{} contains the secret",
                path.display()
            );
        }
    }
}

/// The environment GitHub gives the action's container: `runs.env` with each
/// `${{ inputs.x }}` replaced by the value given in `with:` or the input's
/// default, the `INPUT_*` copies (hyphens kept) and the runner's variables.
fn github_env(with: &BTreeMap<&str, &str>, workspace: &Path) -> BTreeMap<String, String> {
    let action = action();
    let inputs = &action["inputs"];
    let mut env = BTreeMap::new();
    let value_of = |name: &str| -> String {
        with.get(name).map(|v| (*v).to_owned()).unwrap_or_else(|| {
            inputs[name]
                .get("default")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
    };
    for name in map_keys(inputs, "inputs") {
        env.insert(format!("INPUT_{}", name.to_uppercase()), value_of(&name));
    }
    for (var, template) in action["runs"]["env"].as_mapping().unwrap() {
        let template = template.as_str().unwrap();
        let name = template
            .strip_prefix("${{ inputs.")
            .and_then(|t| t.strip_suffix(" }}"))
            .unwrap_or_else(|| panic!("runs.env value {template:?} is not an input"));
        env.insert(var.as_str().unwrap().to_owned(), value_of(name));
    }
    let ws = workspace.display().to_string();
    for (k, v) in [
        ("GITHUB_ACTIONS", "true"),
        ("CI", "true"),
        ("GITHUB_WORKSPACE", ws.as_str()),
        ("GITHUB_REPOSITORY", "firecrest-ci/demo"),
        ("GITHUB_RUN_ID", "4242"),
        ("GITHUB_RUN_ATTEMPT", "1"),
        ("GITHUB_JOB", "daint"),
        ("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567"),
        ("HOME", "/github/home"),
    ] {
        env.insert(k.to_owned(), v.to_owned());
    }
    env
}

#[test]
fn github_action_environment_dry_run() {
    let ws = workspace();
    let files = tempfile::tempdir().unwrap();
    let output_file = files.path().join("output");
    let summary_file = files.path().join("summary");
    std::fs::write(&output_file, "").unwrap();
    std::fs::write(&summary_file, "").unwrap();
    let with = BTreeMap::from([
        ("system", "daint"),
        ("run", RUN_MARKER),
        ("dry-run", "true"),
        ("client-id", "ci-client"),
        ("client-secret", SECRET),
    ]);
    let mut env = github_env(&with, ws.path());
    env.insert("GITHUB_OUTPUT".into(), output_file.display().to_string());
    env.insert(
        "GITHUB_STEP_SUMMARY".into(),
        summary_file.display().to_string(),
    );
    let run = finish(run_binary(&env, ws.path()), ws);

    let opened = run
        .text
        .lines()
        .filter(|l| l.starts_with("::group::"))
        .count();
    let closed = run.text.lines().filter(|l| *l == "::endgroup::").count();
    assert!(opened > 0, "no ::group:: on GitHub:\n{}", run.text);
    assert_eq!(opened, closed, "unbalanced groups:\n{}", run.text);
    assert!(
        !run.text.contains("section_start:"),
        "GitLab markers on GitHub"
    );

    // Outputs, if any yet, are known names in GitHub's file format.
    let outputs = std::fs::read_to_string(&output_file).unwrap();
    let mut lines = outputs.lines();
    while let Some(line) = lines.next() {
        let (name, delimiter) = match line.split_once("<<") {
            Some((name, delimiter)) => (name, Some(delimiter)),
            None => (line.split_once('=').map_or(line, |(n, _)| n), None),
        };
        assert!(
            OUTPUTS.contains(&name),
            "unknown output {name:?} in {outputs:?}"
        );
        if let Some(delimiter) = delimiter {
            assert!(
                lines.by_ref().any(|l| l == delimiter),
                "output {name} never closed by {delimiter:?}"
            );
        }
    }
    for file in [&output_file, &summary_file] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !text.contains(SECRET),
            "{} contains the secret",
            file.display()
        );
    }
    assert_no_secret_in_files(run.workspace.path());
}

/// GitLab section markers in the order they appear: (is_start, name).
fn gitlab_sections(text: &str) -> Vec<(bool, String)> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("\x1b[0Ksection_") {
        let rest = &text[i + "\x1b[0Ksection_".len()..];
        let (is_start, rest) = if let Some(r) = rest.strip_prefix("start:") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("end:") {
            (false, r)
        } else {
            panic!(
                "malformed section marker near {:?}",
                &rest[..rest.len().min(40)]
            );
        };
        let (timestamp, rest) = rest
            .split_once(':')
            .expect("section marker has a timestamp");
        assert!(
            !timestamp.is_empty() && timestamp.bytes().all(|b| b.is_ascii_digit()),
            "section timestamp {timestamp:?}"
        );
        let line = rest.split('\n').next().unwrap_or_default();
        let end = line
            .find(['[', '\r'])
            .unwrap_or_else(|| panic!("section marker without \\r: {line:?}"));
        assert!(
            line[end..].contains("\r\x1b[0K"),
            "section marker must end with \\r ESC[0K: {line:?}"
        );
        found.push((is_start, line[..end].to_owned()));
    }
    found
}

#[test]
fn gitlab_job_environment_dry_run() {
    let ws = workspace();
    let dir = ws.path().display().to_string();
    let mut env: BTreeMap<String, String> = [
        ("GITLAB_CI", "true"),
        ("CI", "true"),
        ("CI_PROJECT_DIR", dir.as_str()),
        ("CI_PROJECT_PATH", "firecrest-ci/demo"),
        ("CI_PIPELINE_ID", "777"),
        ("CI_JOB_ID", "9001"),
        ("CI_COMMIT_SHA", "0123456789abcdef0123456789abcdef01234567"),
        ("FIRECREST_SYSTEM", "daint"),
        ("FIRECREST_RUN", RUN_MARKER),
        ("FIRECREST_DRY_RUN", "true"),
        ("FIRECREST_CLIENT_ID", "ci-client"),
        ("FIRECREST_CLIENT_SECRET", SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    // The component passes every non-secret input, empty when unset.
    for spec in INPUTS.iter().filter(|i| !i.secret) {
        env.entry(spec.env.to_owned())
            .or_insert_with(|| spec.default.to_owned());
    }
    let run = finish(run_binary(&env, ws.path()), ws);

    let sections = gitlab_sections(&run.text);
    assert!(!sections.is_empty(), "no GitLab sections:\n{}", run.text);
    let mut open: Vec<String> = Vec::new();
    for (is_start, name) in sections {
        if is_start {
            open.push(name);
        } else {
            assert_eq!(
                open.pop().as_deref(),
                Some(name.as_str()),
                "section_end without start"
            );
        }
    }
    assert!(open.is_empty(), "sections never closed: {open:?}");
    assert!(!run.text.contains("::group::"), "GitHub commands on GitLab");
    assert_no_secret_in_files(run.workspace.path());
}

#[test]
fn plain_environment_dry_run() {
    let ws = workspace();
    let env: BTreeMap<String, String> = [
        ("FIRECREST_SYSTEM", "daint"),
        ("FIRECREST_RUN", RUN_MARKER),
        ("FIRECREST_DRY_RUN", "true"),
        ("FIRECREST_CLIENT_SECRET", SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let run = finish(run_binary(&env, ws.path()), ws);
    assert!(
        !run.text.contains("::group::"),
        "GitHub commands outside GitHub"
    );
    assert!(
        !run.text.contains("section_start:"),
        "GitLab markers outside GitLab"
    );
    assert_no_secret_in_files(run.workspace.path());
}

#[test]
fn github_env_substitutes_inputs_and_defaults() {
    // The helper the run tests rely on: a given value wins, else the default.
    let ws = workspace();
    let env = github_env(&BTreeMap::from([("system", "daint")]), ws.path());
    assert_eq!(env["FIRECREST_SYSTEM"], "daint");
    assert_eq!(env["INPUT_DRY-RUN"], "false");
    for spec in INPUTS.iter().filter(|i| i.name != "system") {
        assert_eq!(env[spec.env], spec.default, "{}", spec.env);
    }
}

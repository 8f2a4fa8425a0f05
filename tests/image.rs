//! The two ways the corral image is made stay the same image: the Dockerfile (for a
//! registry) and `scripts/image/corral.sh` (built from files, for clusters without one).
//! Offline: both files are read and compared, nothing is built.
//!
//! corral.sh states what it copies from the Dockerfile's final stage as shell variables
//! (`dockerfile_base`, `binary_path`, `user`, `entrypoint`, `tools`); this test reads them
//! and fails when the Dockerfile says otherwise, and when a program the examples run is not
//! among the tools the script checks its image for. `scripts/image/check.sh` then runs each
//! tool in the built image.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The final stage of the Dockerfile: its base, the binary's destination, USER, ENTRYPOINT.
struct FinalStage {
    base: String,
    binary_path: String,
    user: String,
    entrypoint: Vec<String>,
    cmd: Option<String>,
}

fn dockerfile_final_stage() -> FinalStage {
    let text = read("Dockerfile");
    // Continuation lines joined, comments dropped.
    let text = text.replace("\\\n", " ");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
        .expect("the Dockerfile has a FROM");
    let stage = &lines[last_from..];
    let arg = |l: &str| {
        l.split_once(' ')
            .map(|(_, r)| r.trim().to_string())
            .unwrap_or_default()
    };
    let base = arg(stage[0]).split_whitespace().next().unwrap().to_string();
    let mut fs = FinalStage {
        base,
        binary_path: String::new(),
        user: String::new(),
        entrypoint: vec![],
        cmd: None,
    };
    for l in &stage[1..] {
        let (instr, rest) = l.split_once(' ').unwrap_or((l, ""));
        match instr.to_ascii_uppercase().as_str() {
            "COPY" => {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (src, dst) = (words[0], *words.last().unwrap());
                assert!(
                    src.ends_with("/corral"),
                    "the final stage copies {src}, not the corral binary: corral.sh copies only the binary"
                );
                fs.binary_path = dst.to_string();
            }
            "USER" => fs.user = rest.trim().to_string(),
            "ENTRYPOINT" => {
                fs.entrypoint = serde_json::from_str(rest.trim())
                    .unwrap_or_else(|e| panic!("ENTRYPOINT {rest}: not the exec (JSON) form: {e}"))
            }
            "CMD" => fs.cmd = Some(rest.trim().to_string()),
            other => panic!(
                "the Dockerfile's final stage has {other}, which scripts/image/corral.sh does not reproduce: \
                 add it there and teach tests/image.rs about it"
            ),
        }
    }
    fs
}

/// `NAME=value` and `NAME="value"` assignments at the start of a line of corral.sh.
fn script_var(text: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("scripts/image/corral.sh has no line {prefix}..."));
    line[prefix.len()..].trim().trim_matches('"').to_string()
}

/// The programs the examples' commands run: the first argument of each command and health
/// check, and for `sh -c SCRIPT` the command words of SCRIPT (heuristically: the first word
/// of each piece between ; | && || $( and keywords, builtins left out).
fn example_programs() -> BTreeSet<String> {
    let flow = regex::Regex::new(r#"(?m)(?:args|command):\s*(\[.*\])\s*\}?\s*$"#).unwrap();
    let mut programs = BTreeSet::new();
    let mut files = vec![];
    collect_yaml(&repo().join("examples"), &mut files);
    assert!(!files.is_empty(), "no examples found");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for cap in flow.captures_iter(&text) {
            let argv: Vec<String> = serde_json::from_str(&cap[1])
                .unwrap_or_else(|e| panic!("{}: {}: {e}", f.display(), &cap[1]));
            let prog = Path::new(&argv[0])
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            if prog == "sh" && argv.get(1).map(String::as_str) == Some("-c") {
                programs.extend(script_commands(&argv[2]));
            }
            programs.insert(prog);
        }
    }
    programs
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_yaml(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

fn script_commands(script: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "do", "then", "else", "exec", "while", "until", "if", "!", "{",
    ];
    const SKIP: &[&str] = &[
        "done", "fi", "}", ":", "cd", "exit", "export", "read", "set", "shift", "trap", "wait",
        "eval", "unset",
    ];
    let pieces = regex::Regex::new(r"\$\(|&&|\|\||[;|&()\n]").unwrap();
    let mut out = BTreeSet::new();
    for piece in pieces.split(script) {
        let mut words = piece
            .split_whitespace()
            .skip_while(|w| KEYWORDS.contains(w) || w.contains('='));
        if let Some(w) = words.next()
            && !SKIP.contains(&w)
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        {
            out.insert(
                Path::new(w)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string(),
            );
        }
    }
    out
}

#[test]
fn script_builds_what_the_dockerfile_builds() {
    let df = dockerfile_final_stage();
    let sh = read("scripts/image/corral.sh");
    assert_eq!(
        script_var(&sh, "dockerfile_base"),
        df.base,
        "base image (corral.sh copies its package set)"
    );
    assert_eq!(
        script_var(&sh, "binary_path"),
        df.binary_path,
        "the binary's path"
    );
    assert_eq!(script_var(&sh, "user"), df.user, "USER");
    assert_eq!(
        vec![script_var(&sh, "entrypoint")],
        df.entrypoint,
        "ENTRYPOINT"
    );
    assert_eq!(df.cmd, None, "the Dockerfile sets CMD; corral.sh sets none");
    // corral.sh packs with exactly these values.
    for needle in [
        r#"--entrypoint "$entrypoint""#,
        r#"--user "$user""#,
        r#""$binary" "$root$binary_path""#,
    ] {
        assert!(sh.contains(needle), "corral.sh no longer uses {needle}");
    }
}

#[test]
fn script_checks_every_tool_the_examples_run() {
    let sh = read("scripts/image/corral.sh");
    let tools: BTreeSet<String> = script_var(&sh, "tools")
        .split_whitespace()
        .map(String::from)
        .collect();
    let programs = example_programs();
    for needed in ["sh", "head", "tr", "sleep"] {
        assert!(
            programs.contains(needed),
            "the parse of examples/ missed {needed}: {programs:?}"
        );
    }
    let missing: Vec<_> = programs.difference(&tools).collect();
    assert!(
        missing.is_empty(),
        "examples/ run {missing:?}, which scripts/image/corral.sh's tools= does not list \
         (the image must have them: debian:bookworm-slim has, check the script's package set, then add them)"
    );
}

#[test]
fn script_commands_finds_the_programs() {
    let got =
        script_commands("hold=$(head -c 16777216 /dev/zero | tr '\\000' x); exec sleep infinity");
    assert_eq!(got, ["head", "sleep", "tr"].map(String::from).into());
    let got = script_commands("while :; do sleep 1; done");
    assert_eq!(got, ["sleep"].map(String::from).into());
}

//! Keeps README.md and docs/ honest: every TOML block is parsed (and
//! validated) by the real config parser, and every `iron-proxy …` command
//! line (also as `cargo run --release -- …`) by the real CLI parser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use clap::Parser;
use iron_proxy::cli::Cli;
use iron_proxy::config::Config;

fn markdown_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// (language, first line number, body) of each fenced block.
fn fenced_blocks(text: &str) -> Vec<(String, usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match (&mut open, line.trim_start().strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_owned(), n + 2, String::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, _, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn every_toml_block_is_a_valid_config() {
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (lang, line, body) in fenced_blocks(&text) {
            if lang != "toml" {
                continue;
            }
            if let Err(e) = Config::parse(&body, &file) {
                panic!(
                    "{}:{line}: TOML block does not validate:\n{e}",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "expected the docs to show configs, found {checked}"
    );
}

#[test]
fn the_shipped_config_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Config::load(&root.join("config/iron-proxy.toml")).unwrap();
}

/// Command lines of both binaries, as argument vectors.
fn command_lines(body: &str) -> Vec<Vec<String>> {
    body.lines()
        .map(|l| l.trim().trim_start_matches("$ "))
        .filter_map(|l| {
            let (bin, rest) = if let Some(rest) = l.strip_prefix("iron-agent ") {
                ("iron-agent", rest)
            } else {
                let rest = l
                    .strip_prefix("iron-proxy ")
                    .or_else(|| l.strip_prefix("cargo run --release -- "))?;
                ("iron-proxy", rest)
            };
            let mut args = vec![bin.to_owned()];
            args.extend(shlex::split(rest).unwrap_or_else(|| panic!("cannot split `{l}`")));
            Some(args)
        })
        .collect()
}

#[test]
fn every_command_line_parses() {
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (lang, line, body) in fenced_blocks(&text) {
            if !matches!(lang.as_str(), "sh" | "console" | "bash" | "shell") {
                continue;
            }
            for args in command_lines(&body) {
                let parsed = match args[0].as_str() {
                    "iron-agent" => iron_proxy::agent::Cli::try_parse_from(&args).map(drop),
                    _ => Cli::try_parse_from(&args).map(drop),
                };
                if let Err(e) = parsed {
                    panic!(
                        "{}:{line}: `{}` does not parse:\n{e}",
                        file.display(),
                        args.join(" ")
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 4,
        "expected command lines in the docs, found {checked}"
    );
}

/// docs/metrics.md lists exactly the metrics the registry renders.
#[test]
fn metrics_doc_matches_the_registry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("iron_proxy_"))
        .map(str::to_owned)
        .collect();
    // Families with labels render only once they have a child.
    let metrics = iron_proxy::metrics::Metrics::new();
    metrics.request("allow", 200);
    metrics.swap_counter("example").inc();
    let rendered: std::collections::BTreeSet<String> = metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        documented, rendered,
        "docs/metrics.md and the registry disagree"
    );
}

/// Every key the parser accepts, read from the parser itself: a probe key
/// in each table makes serde list the fields it expected.
fn parser_keys() -> Vec<String> {
    let probes = [
        ("listen", "[listen]\nzzz = 1\n"),
        ("admin", "[admin]\nzzz = 1\n"),
        ("ca", "[ca]\nzzz = 1\n"),
        ("upstream", "[upstream]\nzzz = 1\n"),
        ("limits", "[limits]\nzzz = 1\n"),
        ("reload", "[reload]\nzzz = 1\n"),
        ("allow", "[[allow]]\nzzz = 1\n"),
        ("credential", "[[credential]]\nzzz = 1\n"),
        (
            "credential.source",
            "[[credential]]\nsource = { zzz = 1 }\n",
        ),
        ("oauth_refresh", "[[oauth_refresh]]\nzzz = 1\n"),
    ];
    let mut keys = Vec::new();
    for (section, text) in probes {
        let err = Config::parse(text, Path::new("probe.toml"))
            .unwrap_err()
            .to_string();
        let line = err
            .lines()
            .find(|l| l.contains("unknown field `zzz`"))
            .unwrap_or_else(|| panic!("no field list for {section}: {err}"));
        let expected = line.split("expected ").nth(1).unwrap_or("");
        let fields: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(!fields.is_empty(), "no fields parsed for {section}: {line}");
        keys.extend(fields.iter().map(|f| format!("{section}.{f}")));
    }
    keys
}

#[test]
fn every_config_key_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let keys = parser_keys();
    assert!(keys.len() > 30, "too few keys found: {keys:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| {
            let field = k.rsplit('.').next().unwrap_or(k);
            !doc.contains(&format!("| `{field}` |")) && !doc.contains(&format!("`{field} ="))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
}

/// The data-flow diagram appears in the crate doc and in
/// docs/architecture.md; they must be the same picture.
#[test]
fn architecture_diagram_matches_the_crate_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let crate_doc: String = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l)))
        .collect();
    let diagram = |text: &str| {
        fenced_blocks(text)
            .into_iter()
            .find(|(lang, _, _)| lang == "text")
            .map(|(_, _, body)| body)
            .expect("a ```text diagram")
    };
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    assert_eq!(
        diagram(&crate_doc),
        diagram(&doc),
        "src/lib.rs and docs/architecture.md show different diagrams"
    );
}

//! `cargo xtask tidy`: structural checks of the workspace that neither rustc nor clippy make
//! (after rust-analyzer's `xtask/src/tidy.rs`).
//!
//! 1. The crate dependency matrix (from `cargo metadata`): which workspace crate may depend on
//!    which ([`ALLOWED_DEPS`]), external crates confined to some crates ([`CONFINED_EXTERNAL`]),
//!    and no cycle.
//! 2. `unsafe` only under `crates/vigil-dataplane/src/ffi/`, each `unsafe` block and impl with a
//!    `// SAFETY:` comment, each `unsafe fn` with a `# Safety` doc section; every other crate
//!    root `#![forbid(unsafe_code)]`, the data plane's `clippy::undocumented_unsafe_blocks`.
//! 3. A `//!` module doc at the top of every source file of the crates and the binary.
//! 4. ARCHITECTURE.md names every crate and every module file.
//!
//! The checks are functions over data (file texts, parsed metadata); [`tidy`] reads the real
//! tree and reports every violation at once.

use crate::{cargo, step};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// For each workspace crate, the workspace crates it may depend on (normal, build and dev
/// dependencies alike). Arrows point from the core outwards: core ← {dataplane, ota} ← control
/// ← vigil; xtask stands apart.
pub const ALLOWED_DEPS: &[(&str, &[&str])] = &[
    ("vigil-core", &[]),
    ("vigil-dataplane", &["vigil-core"]),
    ("vigil-ota", &["vigil-core"]),
    (
        "vigil-control",
        &["vigil-core", "vigil-dataplane", "vigil-ota"],
    ),
    (
        "vigil",
        &[
            "vigil-core",
            "vigil-dataplane",
            "vigil-ota",
            "vigil-control",
        ],
    ),
    // The fuzz targets drive the libraries' parsers; nothing depends on them.
    ("vigil-fuzz", &["vigil-core", "vigil-ota", "vigil-control"]),
    // The fleet console knows the boxes by their payloads (the core's `wire`) only, and reads
    // a release's bundle with the OTA crate's own verifier (never its agent).
    ("vigil-fleet", &["vigil-core", "vigil-ota"]),
    ("xtask", &[]),
];

/// External crates that only some workspace crates may depend on (any kind of dependency):
/// errors are typed in the libraries, `anyhow` is for the edges; the CLI is the binaries'.
pub const CONFINED_EXTERNAL: &[(&str, &[&str])] = &[
    ("anyhow", &["vigil", "vigil-fleet", "xtask"]),
    ("clap", &["vigil", "vigil-fleet"]),
];

/// The only folder whose files may contain `unsafe`.
pub const UNSAFE_DIR: &str = "crates/vigil-dataplane/src/ffi/";

/// How many lines above an `unsafe` block or impl its `// SAFETY:` comment may start.
const SAFETY_WINDOW: usize = 8;

/// Runs every check on the tree at `root`, prints the dependency graph it saw, and fails with
/// the list of all violations.
pub fn tidy(root: &Path) -> Result<()> {
    let meta = cargo_metadata(root)?;
    let ws = parse_metadata(&meta, root)?;
    step("tidy: workspace dependency graph (normal and build; dev in brackets)");
    for line in graph_lines(&ws) {
        println!("    {line}");
    }
    let files = read_sources(root)?;
    let architecture =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("reading ARCHITECTURE.md")?;

    let mut v = check_deps(&ws, ALLOWED_DEPS, CONFINED_EXTERNAL);
    v.extend(check_unsafe(&files));
    v.extend(check_crate_roots(&files));
    v.extend(check_module_docs(&files));
    let names: Vec<String> = ws.iter().map(|m| m.name.clone()).collect();
    v.extend(check_architecture(&architecture, &names, &files));
    if v.is_empty() {
        step(&format!(
            "tidy: ok ({} crates, {} Rust files)",
            ws.len(),
            files.len()
        ));
        return Ok(());
    }
    eprintln!("tidy: {} violation(s):", v.len());
    for x in &v {
        eprintln!("  - {x}");
    }
    bail!("tidy found {} violation(s) (listed above)", v.len())
}

// ---------------------------------------------------------------------------------------------
// 1. Dependency matrix

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DepKind {
    Normal,
    Build,
    Dev,
}

impl DepKind {
    fn as_str(self) -> &'static str {
        match self {
            DepKind::Normal => "normal",
            DepKind::Build => "build",
            DepKind::Dev => "dev",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Dep {
    /// The package's name (not a `package = ` rename).
    pub name: String,
    pub kind: DepKind,
}

/// A workspace member and what its manifest declares.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    /// The manifest, relative to the workspace root where possible.
    pub manifest: String,
    pub deps: Vec<Dep>,
}

fn cargo_metadata(root: &Path) -> Result<serde_json::Value> {
    // --no-deps: only the workspace's own manifests are needed; no resolution, no network.
    let out = cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing cargo metadata's JSON")
}

/// The workspace members of `cargo metadata --format-version 1` output, with their declared
/// dependencies, sorted by name.
pub fn parse_metadata(meta: &serde_json::Value, root: &Path) -> Result<Vec<Member>> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("cargo metadata: no workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut out = Vec::new();
    for p in meta["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
    {
        if !p["id"].as_str().is_some_and(|id| members.contains(id)) {
            continue;
        }
        let name = p["name"].as_str().context("package without a name")?;
        let manifest = p["manifest_path"].as_str().unwrap_or_default();
        let manifest = Path::new(manifest)
            .strip_prefix(root)
            .map(|m| m.display().to_string())
            .unwrap_or_else(|_| manifest.to_string());
        let mut deps = Vec::new();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let kind = match d["kind"].as_str() {
                None => DepKind::Normal,
                Some("build") => DepKind::Build,
                Some("dev") => DepKind::Dev,
                Some(other) => bail!("{name}: unknown dependency kind {other:?}"),
            };
            let dep = d["name"].as_str().context("dependency without a name")?;
            deps.push(Dep {
                name: dep.to_string(),
                kind,
            });
        }
        out.push(Member {
            name: name.to_string(),
            manifest,
            deps,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Edges between workspace crates: crate → (dependency → kinds).
fn internal_edges(ws: &[Member]) -> BTreeMap<&str, BTreeMap<&str, BTreeSet<DepKind>>> {
    let names: BTreeSet<&str> = ws.iter().map(|m| m.name.as_str()).collect();
    let mut g = BTreeMap::new();
    for m in ws {
        let e: &mut BTreeMap<&str, BTreeSet<DepKind>> = g.entry(m.name.as_str()).or_default();
        for d in m.deps.iter().filter(|d| names.contains(d.name.as_str())) {
            e.entry(d.name.as_str()).or_default().insert(d.kind);
        }
    }
    g
}

/// One line per workspace crate: `vigil-control -> vigil-core, vigil-dataplane, vigil-ota`,
/// dev-only dependencies in brackets.
pub fn graph_lines(ws: &[Member]) -> Vec<String> {
    internal_edges(ws)
        .into_iter()
        .map(|(name, deps)| {
            let build: Vec<&str> = deps
                .iter()
                .filter(|(_, k)| k.iter().any(|k| *k != DepKind::Dev))
                .map(|(d, _)| *d)
                .collect();
            let dev: Vec<&str> = deps
                .iter()
                .filter(|(_, k)| k.iter().all(|k| *k == DepKind::Dev))
                .map(|(d, _)| *d)
                .collect();
            let mut line = format!(
                "{name} -> {}",
                if build.is_empty() {
                    "(none)".to_string()
                } else {
                    build.join(", ")
                }
            );
            if !dev.is_empty() {
                line.push_str(&format!(" [dev: {}]", dev.join(", ")));
            }
            line
        })
        .collect()
}

/// A cycle in `graph` (as the list of nodes along it, first repeated at the end), if any.
pub fn find_cycle(graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        n: &str,
        graph: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(n.to_string(), Mark::Open);
        path.push(n.to_string());
        for next in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn matrix_graph(allowed: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    allowed
        .iter()
        .map(|(n, deps)| (n.to_string(), deps.iter().map(|d| d.to_string()).collect()))
        .collect()
}

/// Violations of the dependency rules by the workspace `ws`: every dependency between
/// workspace crates must be in `allowed` (whatever its kind), every crate of `allowed` must be
/// a member and every member in `allowed`, each external crate of `confined` may only be a
/// dependency of the crates listed with it, and neither the matrix nor the graph seen may have
/// a cycle.
pub fn check_deps(
    ws: &[Member],
    allowed: &[(&str, &[&str])],
    confined: &[(&str, &[&str])],
) -> Vec<String> {
    let mut v = Vec::new();
    let matrix = matrix_graph(allowed);
    if let Some(c) = find_cycle(&matrix) {
        v.push(format!(
            "dependency matrix: the allowed matrix itself has a cycle: {}",
            c.join(" -> ")
        ));
    }
    let names: BTreeSet<&str> = ws.iter().map(|m| m.name.as_str()).collect();
    for (n, _) in allowed {
        if !names.contains(n) {
            v.push(format!(
                "dependency matrix: crate `{n}` is in tidy's matrix but not a workspace member"
            ));
        }
    }
    for m in ws {
        let Some(ok) = matrix.get(&m.name) else {
            v.push(format!(
                "dependency matrix: workspace member `{}` ({}) is not in tidy's matrix (xtask/src/tidy.rs, ALLOWED_DEPS): say which crates it may depend on",
                m.name, m.manifest
            ));
            continue;
        };
        for d in &m.deps {
            if names.contains(d.name.as_str()) && !ok.contains(&d.name) {
                v.push(format!(
                    "dependency matrix: `{}` ({}) has a {} dependency on `{}`; `{}` may depend only on: {}",
                    m.name,
                    m.manifest,
                    d.kind.as_str(),
                    d.name,
                    m.name,
                    if ok.is_empty() {
                        "no workspace crate".to_string()
                    } else {
                        ok.join(", ")
                    }
                ));
            }
            if let Some((_, only)) = confined.iter().find(|(c, _)| *c == d.name)
                && !only.contains(&m.name.as_str())
            {
                v.push(format!(
                    "external crates: `{}` ({}) has a {} dependency on `{}`, which only {} may depend on",
                    m.name,
                    m.manifest,
                    d.kind.as_str(),
                    d.name,
                    only.join(", ")
                ));
            }
        }
    }
    let seen: BTreeMap<String, Vec<String>> = internal_edges(ws)
        .into_iter()
        .map(|(n, deps)| {
            (
                n.to_string(),
                deps.into_iter()
                    .filter(|(_, k)| k.iter().any(|k| *k != DepKind::Dev))
                    .map(|(d, _)| d.to_string())
                    .collect(),
            )
        })
        .collect();
    if let Some(c) = find_cycle(&seen) {
        v.push(format!(
            "dependency matrix: the workspace's dependencies form a cycle: {}",
            c.join(" -> ")
        ));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// A small lexer: Rust source with comments and the contents of literals told apart from code.

/// A source file split into lines twice over: `code` (comments and the contents of string and
/// char literals replaced by spaces, quotes kept) and `comments` (the text of the comments on
/// each line, `//` included). Both have as many lines as the source.
#[derive(Debug)]
pub struct Lexed {
    pub code: Vec<String>,
    pub comments: Vec<String>,
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

pub fn lex(src: &str) -> Lexed {
    let c: Vec<char> = src.chars().collect();
    let n = c.len();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let mut code = String::with_capacity(src.len());
    let mut comments = String::new();
    // Outside code: newlines kept in both (so lines line up), the rest blanked in `code`.
    let blank = |ch: char, code: &mut String, comments: &mut String| {
        if ch == '\n' {
            code.push('\n');
            comments.push('\n');
        } else {
            code.push(' ');
        }
    };
    let comment = |ch: char, code: &mut String, comments: &mut String| {
        if ch == '\n' {
            code.push('\n');
        } else {
            code.push(' ');
        }
        comments.push(ch);
    };
    let mut i = 0;
    while i < n {
        let ch = c[i];
        let token_start = i == 0 || !is_ident(c[i - 1]);
        // Line comment (also `///` and `//!`).
        if ch == '/' && at(i + 1) == '/' {
            while i < n && c[i] != '\n' {
                comment(c[i], &mut code, &mut comments);
                i += 1;
            }
            continue;
        }
        // Block comment, nested ones included.
        if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0usize;
            while i < n {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    comment('/', &mut code, &mut comments);
                    comment('*', &mut code, &mut comments);
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    comment('*', &mut code, &mut comments);
                    comment('/', &mut code, &mut comments);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    comment(c[i], &mut code, &mut comments);
                    i += 1;
                }
            }
            continue;
        }
        if token_start && matches!(ch, 'r' | 'b' | 'c') {
            // Raw strings: r"…", r#"…"#, br#"…"#, cr"…".
            let mut j = i;
            if matches!(ch, 'b' | 'c') && at(j + 1) == 'r' {
                j += 1;
            }
            if c[j] == 'r' {
                let mut k = j + 1;
                while at(k) == '#' {
                    k += 1;
                }
                let hashes = k - j - 1;
                if at(k) == '"' {
                    code.extend(&c[i..=k]);
                    i = k + 1;
                    while i < n {
                        if c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#') {
                            code.extend(&c[i..=i + hashes]);
                            i += hashes + 1;
                            break;
                        }
                        blank(c[i], &mut code, &mut comments);
                        i += 1;
                    }
                    continue;
                }
                if ch == 'r' && hashes == 1 && is_ident(at(k)) {
                    // A raw identifier (`r#unsafe` is a name, not the keyword): blanked.
                    while i < n && (i < k || is_ident(c[i])) {
                        code.push(' ');
                        i += 1;
                    }
                    continue;
                }
            }
            // Byte and C strings (b"…", c"…") and byte chars (b'…'): the prefix is code, the
            // literal follows (a string is read on the next turn).
            if matches!(ch, 'b' | 'c') && at(i + 1) == '"' {
                code.push(ch);
                i += 1;
                continue;
            }
            if ch == 'b' && at(i + 1) == '\'' {
                code.push(ch);
                i = char_literal(&c, i + 1, &mut code);
                continue;
            }
        }
        if token_start && is_ident(ch) {
            // A whole identifier or number at once, so no prefix check fires inside one.
            while i < n && is_ident(c[i]) {
                code.push(c[i]);
                i += 1;
            }
            continue;
        }
        if ch == '"' {
            code.push('"');
            i += 1;
            while i < n {
                if c[i] == '\\' {
                    blank(c[i], &mut code, &mut comments);
                    if i + 1 < n {
                        blank(c[i + 1], &mut code, &mut comments);
                    }
                    i += 2;
                } else if c[i] == '"' {
                    code.push('"');
                    i += 1;
                    break;
                } else {
                    blank(c[i], &mut code, &mut comments);
                    i += 1;
                }
            }
            continue;
        }
        if ch == '\'' {
            // A char literal ('x', '\n', '\u{…}') or a lifetime/label ('a, 'static).
            if at(i + 1) == '\\' || (at(i + 1) != '\'' && at(i + 2) == '\'') {
                i = char_literal(&c, i, &mut code);
            } else {
                code.push('\'');
                i += 1;
            }
            continue;
        }
        if ch == '\n' {
            comments.push('\n');
        }
        code.push(ch);
        i += 1;
    }
    // Every newline went to both, so they split into as many lines; pad to be sure.
    let mut code: Vec<String> = code.split('\n').map(str::to_string).collect();
    let mut comments: Vec<String> = comments.split('\n').map(str::to_string).collect();
    let lines = code.len().max(comments.len());
    code.resize(lines, String::new());
    comments.resize(lines, String::new());
    Lexed { code, comments }
}

/// A char literal starting at `c[i] == '\''`: quotes kept, content blanked; the index after it.
fn char_literal(c: &[char], mut i: usize, code: &mut String) -> usize {
    code.push('\'');
    i += 1;
    if c.get(i) == Some(&'\\') {
        code.push(' ');
        i += 1;
        if i < c.len() {
            code.push(' ');
            i += 1;
        }
    }
    while i < c.len() && c[i] != '\'' && c[i] != '\n' {
        code.push(' ');
        i += 1;
    }
    if c.get(i) == Some(&'\'') {
        code.push('\'');
        i += 1;
    }
    i
}

/// Columns where `word` stands as a whole word in `line`.
fn word_positions(line: &str, word: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = line[from..].find(word) {
        let s = from + p;
        let e = s + word.len();
        let before = line[..s].chars().next_back().is_some_and(is_ident);
        let after = line[e..].chars().next().is_some_and(is_ident);
        if !before && !after {
            out.push(s);
        }
        from = e;
    }
    out
}

/// `(line, column)` (0-based) of every `unsafe` keyword in code.
pub fn unsafe_positions(lexed: &Lexed) -> Vec<(usize, usize)> {
    lexed
        .code
        .iter()
        .enumerate()
        .flat_map(|(l, line)| {
            word_positions(line, "unsafe")
                .into_iter()
                .map(move |c| (l, c))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 2. unsafe

/// What an `unsafe` keyword introduces.
#[derive(Debug, PartialEq, Eq)]
pub enum UnsafeUse {
    /// `unsafe { … }`: needs a `// SAFETY:` comment.
    Block,
    /// `unsafe impl`: needs a `// SAFETY:` comment.
    Impl,
    /// `unsafe fn name` / `unsafe extern "C" fn name`: needs a `# Safety` doc section.
    FnDecl,
    /// Anything else: fn pointer types, `unsafe extern` blocks, `unsafe trait`, `#[unsafe(…)]`.
    Other,
}

/// The next `k` tokens of code after `(line, col)`: identifiers, `"…"` strings, single
/// punctuation characters.
fn next_tokens(lexed: &Lexed, line: usize, col: usize, k: usize) -> Vec<String> {
    let mut rest = lexed.code[line][col..].to_string();
    for l in &lexed.code[line + 1..] {
        if rest.len() > 400 {
            break;
        }
        rest.push(' ');
        rest.push_str(l);
    }
    let c: Vec<char> = rest.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() && out.len() < k {
        if c[i].is_whitespace() {
            i += 1;
        } else if is_ident(c[i]) {
            let s = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            out.push(c[s..i].iter().collect());
        } else if c[i] == '"' {
            let s = i;
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += 1;
            }
            i += 1;
            out.push(c[s..i.min(c.len())].iter().collect());
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

pub fn classify_unsafe(lexed: &Lexed, line: usize, col: usize) -> UnsafeUse {
    let t = next_tokens(lexed, line, col + "unsafe".len(), 4);
    let t: Vec<&str> = t.iter().map(String::as_str).collect();
    let is_name = |s: Option<&&str>| s.is_some_and(|s| s.chars().next().is_some_and(is_ident));
    match t.as_slice() {
        ["{", ..] => UnsafeUse::Block,
        ["impl", ..] => UnsafeUse::Impl,
        ["fn", rest @ ..] if is_name(rest.first()) => UnsafeUse::FnDecl,
        ["extern", abi, "fn", rest @ ..] if abi.starts_with('"') && is_name(rest.first()) => {
            UnsafeUse::FnDecl
        }
        ["extern", "fn", rest @ ..] if is_name(rest.first()) => UnsafeUse::FnDecl,
        _ => UnsafeUse::Other,
    }
}

fn ends_statement(code: &str) -> bool {
    let t = code.trim_end();
    t.ends_with(';') || t.ends_with('}') || t.ends_with('{')
}

/// A `// SAFETY:` comment on one of the [`SAFETY_WINDOW`] lines above `line`, with nothing
/// between but comments, blank lines, attributes and the start of the same statement (the
/// search stops at a line that ends a statement or opens a block).
pub fn has_safety_comment(lexed: &Lexed, line: usize) -> bool {
    for l in (line.saturating_sub(SAFETY_WINDOW)..line).rev() {
        if lexed.comments[l].contains("SAFETY:") {
            return true;
        }
        let code = lexed.code[l].trim();
        if code.is_empty() || code.starts_with("#[") {
            continue;
        }
        if ends_statement(code) {
            return false;
        }
    }
    false
}

/// A `# Safety` section in the doc comment (and attributes) right above `line`.
pub fn has_safety_doc(lexed: &Lexed, line: usize) -> bool {
    for l in (0..line).rev() {
        let code = lexed.code[l].trim();
        let comment = lexed.comments[l].trim();
        if code.is_empty() {
            let text = comment
                .strip_prefix("///")
                .or_else(|| comment.strip_prefix("/**"))
                .or_else(|| comment.strip_prefix('*'))
                .unwrap_or(comment);
            if text.trim() == "# Safety" {
                return true;
            }
            continue;
        }
        if code.starts_with("#[") {
            continue;
        }
        return false;
    }
    false
}

/// Violations of the `unsafe` rules by the files `(path relative to the root, text)`.
pub fn check_unsafe(files: &[(String, String)]) -> Vec<String> {
    let mut v = Vec::new();
    for (path, text) in files {
        let lexed = lex(text);
        let allowed = path.starts_with(UNSAFE_DIR);
        for (line, col) in unsafe_positions(&lexed) {
            let at = format!("{path}:{}", line + 1);
            if !allowed {
                v.push(format!(
                    "unsafe: {at}: `unsafe` outside {UNSAFE_DIR} (the only place it may be; move the code there behind a safe wrapper)"
                ));
                continue;
            }
            match classify_unsafe(&lexed, line, col) {
                UnsafeUse::Block if !has_safety_comment(&lexed, line) => v.push(format!(
                    "unsafe: {at}: `unsafe` block without a `// SAFETY:` comment in the {SAFETY_WINDOW} lines above"
                )),
                UnsafeUse::Impl if !has_safety_comment(&lexed, line) => v.push(format!(
                    "unsafe: {at}: `unsafe impl` without a `// SAFETY:` comment in the {SAFETY_WINDOW} lines above"
                )),
                UnsafeUse::FnDecl if !has_safety_doc(&lexed, line) => v.push(format!(
                    "unsafe: {at}: `unsafe fn` without a `# Safety` section in its doc comment"
                )),
                _ => {}
            }
        }
    }
    v
}

/// Whether `code` (comments and strings already blanked) has an inner attribute `#![level(…)]`
/// with `lint` among its lints, for one of `levels`.
fn has_lint_attr(code: &str, levels: &[&str], lint: &str) -> bool {
    let squeezed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    levels.iter().any(|level| {
        let open = format!("#![{level}(");
        squeezed.match_indices(&open).any(|(p, _)| {
            let rest = &squeezed[p + open.len()..];
            rest.find(")]")
                .is_some_and(|e| rest[..e].split(',').any(|l| l == lint))
        })
    })
}

/// The crate roots in `files`: `crates/*/src/lib.rs`, `src/main.rs`, `xtask/src/main.rs`; each
/// must forbid `unsafe_code` except the data plane's, which must have clippy's
/// `undocumented_unsafe_blocks` at warn or deny. A crate folder under `crates/` without a
/// `src/lib.rs`, or a missing `src/main.rs` or `xtask/src/main.rs`, is reported too.
pub fn check_crate_roots(files: &[(String, String)]) -> Vec<String> {
    let mut v = Vec::new();
    let mut roots: BTreeSet<String> = ["src/main.rs", "xtask/src/main.rs"]
        .into_iter()
        .map(String::from)
        .collect();
    for (path, _) in files {
        if let Some(rest) = path.strip_prefix("crates/")
            && let Some((krate, in_crate)) = rest.split_once('/')
            && in_crate.starts_with("src/")
        {
            roots.insert(format!("crates/{krate}/src/lib.rs"));
        }
    }
    let dataplane = "crates/vigil-dataplane/src/lib.rs";
    for root in roots {
        let Some((_, text)) = files.iter().find(|(p, _)| *p == root) else {
            v.push(format!("crate roots: {root} is missing"));
            continue;
        };
        let code = lex(text).code.join("\n");
        if root == dataplane {
            if !has_lint_attr(
                &code,
                &["warn", "deny", "forbid"],
                "clippy::undocumented_unsafe_blocks",
            ) {
                v.push(format!(
                    "crate roots: {root} must have `#![warn(clippy::undocumented_unsafe_blocks)]` (or deny)"
                ));
            }
        } else if !has_lint_attr(&code, &["forbid"], "unsafe_code") {
            v.push(format!(
                "crate roots: {root} must have `#![forbid(unsafe_code)]` (only vigil-dataplane may have unsafe, in {UNSAFE_DIR})"
            ));
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// 3. Module docs

/// `src/x.rs` → (`src/`, `x.rs`); `crates/c/src/a/b.rs` → (`crates/c/src/`, `a/b.rs`); `None`
/// for files of neither (tests, xtask, a crate's benches…).
pub fn crate_module(path: &str) -> Option<(&str, &str)> {
    if let Some(rel) = path.strip_prefix("src/") {
        return Some(("src/", rel));
    }
    let rest = path.strip_prefix("crates/")?;
    let (krate, in_crate) = rest.split_once('/')?;
    let rel = in_crate.strip_prefix("src/")?;
    Some((&path[.."crates/".len() + krate.len() + "/src/".len()], rel))
}

/// Whether `text` starts with a `//!` line, after blank lines and inner attributes.
pub fn starts_with_module_doc(text: &str) -> bool {
    let mut in_attr = false;
    for line in text.lines() {
        let t = line.trim();
        if in_attr {
            in_attr = !t.ends_with(']');
            continue;
        }
        if t.is_empty() {
            continue;
        }
        if t.starts_with("#![") {
            in_attr = !t.ends_with(']');
            continue;
        }
        return t.starts_with("//!");
    }
    false
}

pub fn check_module_docs(files: &[(String, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(p, _)| crate_module(p).is_some())
        .filter(|(_, text)| !starts_with_module_doc(text))
        .map(|(p, _)| {
            format!(
                "module docs: {p} does not start with a `//!` doc comment saying what the module is"
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 4. ARCHITECTURE.md

fn is_path_char(c: char) -> bool {
    is_ident(c) || matches!(c, '/' | '-' | '.')
}

/// Whether `doc` mentions `name` as a whole path: not inside a longer name or path (the
/// character before is not a path character, unless the text before ends with one of
/// `prefixes`, e.g. `crates/vigil-core/src/config/schema.rs`), and not followed by a name or
/// path character (`config/` does not count inside `config/schema.rs`).
pub fn mentions(doc: &str, name: &str, prefixes: &[&str]) -> bool {
    doc.match_indices(name).any(|(p, _)| {
        let before = &doc[..p];
        let after = &doc[p + name.len()..];
        let start_ok = !before.chars().next_back().is_some_and(is_path_char)
            || prefixes.iter().any(|pre| {
                before.ends_with(pre)
                    && !before[..before.len() - pre.len()]
                        .chars()
                        .next_back()
                        .is_some_and(is_path_char)
            });
        let end_ok = !after.chars().next().is_some_and(|c| {
            is_ident(c) || c == '/' || c == '-' || (c == '.' && after[1..].starts_with(is_ident))
        });
        start_ok && end_ok
    })
}

/// The name ARCHITECTURE.md must use for a module file (relative to its crate's `src/`):
/// the path itself, `a/` for `a/mod.rs`, nothing for `lib.rs`/`main.rs`.
pub fn module_name(rel: &str) -> Option<String> {
    if rel == "lib.rs" || rel == "main.rs" {
        return None;
    }
    if let Some(dir) = rel.strip_suffix("mod.rs") {
        return (dir.ends_with('/') || dir.is_empty()).then(|| dir.to_string());
    }
    Some(rel.to_string())
}

/// Violations: a crate name in `crates` or a module file of `files` (under `src/` or
/// `crates/*/src/`) that `doc` does not name.
pub fn check_architecture(doc: &str, crates: &[String], files: &[(String, String)]) -> Vec<String> {
    let mut v = Vec::new();
    for c in crates {
        if !mentions(doc, c, &[]) {
            v.push(format!(
                "ARCHITECTURE.md: does not name the crate `{c}` (each workspace crate must be described)"
            ));
        }
    }
    for (path, _) in files {
        let Some((src, rel)) = crate_module(path) else {
            continue;
        };
        let Some(name) = module_name(rel) else {
            continue;
        };
        if name.is_empty() || !mentions(doc, &name, &[src]) {
            v.push(format!(
                "ARCHITECTURE.md: does not name {path} (write `{name}`, its path relative to {src}{})",
                if name.ends_with('/') {
                    ", standing alone"
                } else {
                    ""
                }
            ));
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Reading the tree

/// Every `.rs` file under `src/`, `crates/`, `tests/` and `xtask/` (no `target/` or hidden
/// folders), as `(path relative to root with '/', text)`, sorted by path.
pub fn read_sources(root: &Path) -> Result<Vec<(String, String)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for e in entries {
            let e = e?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(root, &path, out)?;
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, text));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for d in ["src", "crates", "tests", "xtask"] {
        walk(root, &root.join(d), &mut out)?;
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    fn count(src: &str) -> usize {
        unsafe_positions(&lex(src)).len()
    }

    #[test]
    fn lexer_counts_unsafe_in_code_only() {
        assert_eq!(count("fn f() { unsafe { g() } }"), 1);
        assert_eq!(
            count("let x = unsafe { *p };\nunsafe impl Send for X {}"),
            2
        );
        assert_eq!(count("// unsafe here\n/// and unsafe here"), 0);
        assert_eq!(
            count("/* unsafe /* nested unsafe */ still unsafe */ f();"),
            0
        );
        assert_eq!(count(r#"let s = "unsafe { }";"#), 0);
        assert_eq!(count(r#"let s = "escaped \" unsafe";"#), 0);
        assert_eq!(count("let s = r#\"a \" unsafe \"#;"), 0);
        assert_eq!(count("let s = r##\"a \"# unsafe \"##; unsafe {}"), 1);
        assert_eq!(count("let s = br\"unsafe\"; let t = b\"unsafe\";"), 0);
        assert_eq!(count("let s = \"multi\nline unsafe\n\";"), 0);
        // Words that merely contain it, and a raw identifier.
        assert_eq!(count("let unsafe_code = 1; let not_unsafe = r#unsafe;"), 0);
    }

    #[test]
    fn lexer_tells_lifetimes_from_chars() {
        assert_eq!(count("fn f<'a>(x: &'a str) -> &'a str { unsafe { x } }"), 1);
        assert_eq!(count("let c = '\"'; unsafe { }"), 1);
        assert_eq!(count("let c = '\\''; let d = b'\"'; unsafe { }"), 1);
        assert_eq!(
            count("let c = '\\u{1F600}'; 'outer: loop { unsafe { } }"),
            1
        );
        assert_eq!(count("fn f(x: &'static str) {} // unsafe"), 0);
    }

    #[test]
    fn lexer_keeps_lines_and_comments() {
        let l = lex("a(); // SAFETY: x\n/* b\nc */ d();\n\"s\ns\"");
        assert_eq!(l.code.len(), 5);
        assert_eq!(l.comments[0], "// SAFETY: x");
        assert_eq!(l.code[0].trim(), "a();");
        assert_eq!(l.code[2].trim(), "d();");
        assert_eq!(l.comments[2], "c */");
    }

    #[test]
    fn unsafe_is_classified() {
        let kind = |s: &str| {
            let l = lex(s);
            let (line, col) = unsafe_positions(&l)[0];
            classify_unsafe(&l, line, col)
        };
        assert_eq!(kind("unsafe { f() }"), UnsafeUse::Block);
        assert_eq!(kind("let x =\n  unsafe\n  { f() };"), UnsafeUse::Block);
        assert_eq!(kind("unsafe impl Send for X {}"), UnsafeUse::Impl);
        assert_eq!(kind("pub unsafe fn f() {}"), UnsafeUse::FnDecl);
        assert_eq!(kind("unsafe extern \"C\" fn f() {}"), UnsafeUse::FnDecl);
        assert_eq!(
            kind("type F = unsafe extern \"C\" fn(i32);"),
            UnsafeUse::Other
        );
        assert_eq!(kind("type F = unsafe fn(i32);"), UnsafeUse::Other);
        assert_eq!(kind("unsafe extern \"C\" { fn f(); }"), UnsafeUse::Other);
        assert_eq!(kind("#[unsafe(no_mangle)] fn f() {}"), UnsafeUse::Other);
    }

    #[test]
    fn unsafe_outside_ffi_is_reported() {
        let v = check_unsafe(&files(&[
            (
                "crates/vigil-core/src/a.rs",
                "// unsafe\nfn f() { unsafe { g() } }",
            ),
            ("src/b.rs", "const S: &str = \"unsafe\";"),
            ("tests/c.rs", "/* unsafe */"),
        ]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("crates/vigil-core/src/a.rs:2"), "{v:?}");
    }

    #[test]
    fn safety_comments_are_required_in_ffi() {
        let ok = "\
// SAFETY: fine
unsafe impl Send for X {}
fn f() {
    // SAFETY: the pointer is live,
    // and aligned.
    #[allow(unused)]
    let r =
        unsafe { *p };
    let q = g(
        a,
        /* SAFETY: a block comment will do */
        unsafe { h() },
    );
}
/// Does things.
///
/// # Safety
/// `p` must be live.
#[inline]
pub unsafe fn k(p: *const u8) {}
type F = unsafe extern \"C\" fn();
";
        let v = check_unsafe(&files(&[("crates/vigil-dataplane/src/ffi/ok.rs", ok)]));
        assert!(v.is_empty(), "{v:?}");
        let bad = "\
// SAFETY: for the first only
unsafe { a() };
unsafe { b() };
fn f() {
    unsafe { c() }
}
unsafe impl Sync for X {}
/// No section.
pub unsafe fn k() {}
// SAFETY (test): not the marker
unsafe { d() };
";
        let v = check_unsafe(&files(&[("crates/vigil-dataplane/src/ffi/bad.rs", bad)]));
        let lines: Vec<&str> = v
            .iter()
            .map(|m| m.split(": ").nth(1).unwrap_or_default())
            .collect();
        assert_eq!(
            lines,
            [
                "crates/vigil-dataplane/src/ffi/bad.rs:3",
                "crates/vigil-dataplane/src/ffi/bad.rs:5",
                "crates/vigil-dataplane/src/ffi/bad.rs:7",
                "crates/vigil-dataplane/src/ffi/bad.rs:9",
                "crates/vigil-dataplane/src/ffi/bad.rs:11",
            ],
            "{v:?}"
        );
    }

    #[test]
    fn crate_roots_need_their_attributes() {
        let v = check_crate_roots(&files(&[
            (
                "crates/vigil-core/src/lib.rs",
                "//! Core.\n#![forbid(unsafe_code)]\n",
            ),
            ("crates/vigil-core/src/x.rs", ""),
            (
                "crates/vigil-ota/src/lib.rs",
                "//! #![forbid(unsafe_code)]\n#![deny(unsafe_code)]",
            ),
            (
                "crates/vigil-dataplane/src/lib.rs",
                "#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]",
            ),
            ("crates/vigil-control/src/http.rs", ""),
            ("src/main.rs", "#![forbid(unused, unsafe_code)]"),
        ]));
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("crates/vigil-control/src/lib.rs is missing"));
        assert!(v[1].contains("crates/vigil-ota/src/lib.rs must have"));
        assert!(v[2].contains("xtask/src/main.rs is missing"));
    }

    #[test]
    fn module_docs() {
        assert!(starts_with_module_doc("\n//! Doc.\nfn f() {}"));
        assert!(starts_with_module_doc(
            "#![forbid(unsafe_code)]\n#![allow(\n  dead_code,\n)]\n//! Doc."
        ));
        assert!(!starts_with_module_doc("/// Item doc.\nfn f() {}"));
        assert!(!starts_with_module_doc(""));
        let v = check_module_docs(&files(&[
            ("src/a.rs", "//! A."),
            ("src/b.rs", "use x;"),
            ("crates/c/src/d/e.rs", "// not a doc"),
            ("tests/t.rs", "use x;"),
            ("xtask/src/x.rs", "use x;"),
        ]));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("src/b.rs") && v[1].contains("crates/c/src/d/e.rs"));
    }

    #[test]
    fn architecture_names_crates_and_modules() {
        let doc = "\
# vigil-core
`config/` holds `config/schema.rs`; `crates/vigil-core/src/worker.rs`.
The data plane: vigil-dataplane-extra, `ffi/gst_cuda.rs`; see src/bench.rs. gpu/mod.rs
";
        let crates = ["vigil-core".to_string(), "vigil-dataplane".to_string()];
        let v = check_architecture(
            doc,
            &crates,
            &files(&[
                ("crates/vigil-core/src/lib.rs", ""),
                ("crates/vigil-core/src/config/mod.rs", ""),
                ("crates/vigil-core/src/config/schema.rs", ""),
                ("crates/vigil-core/src/worker.rs", ""),
                ("crates/vigil-core/src/schema.rs", ""),
                ("crates/vigil-dataplane/src/ffi/gst_cuda.rs", ""),
                ("crates/vigil-dataplane/src/gpu/mod.rs", ""),
                ("crates/vigil-dataplane/src/gst_cuda.rs", ""),
                ("src/main.rs", ""),
                ("src/bench.rs", ""),
                ("tests/cli.rs", ""),
            ]),
        );
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v[0].contains("crate `vigil-dataplane`"));
        assert!(v[1].contains("crates/vigil-core/src/schema.rs"));
        assert!(v[2].contains("crates/vigil-dataplane/src/gpu/mod.rs (write `gpu/`"));
        assert!(v[3].contains("crates/vigil-dataplane/src/gst_cuda.rs"));
    }

    fn member(name: &str, deps: &[(&str, DepKind)]) -> Member {
        Member {
            name: name.to_string(),
            manifest: format!("crates/{name}/Cargo.toml"),
            deps: deps
                .iter()
                .map(|(n, kind)| Dep {
                    name: n.to_string(),
                    kind: *kind,
                })
                .collect(),
        }
    }

    #[test]
    fn matrix_reports_forbidden_edges() {
        use DepKind::*;
        let allowed: &[(&str, &[&str])] = &[("core", &[]), ("dp", &["core"]), ("ota", &["core"])];
        let confined: &[(&str, &[&str])] = &[("anyhow", &["app"])];
        let ws = [
            member("core", &[("serde", Normal)]),
            member("dp", &[("core", Normal), ("ota", Build)]),
            member("ota", &[("core", Normal), ("dp", Dev), ("anyhow", Dev)]),
        ];
        let v = check_deps(&ws, allowed, confined);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("`dp`") && v[0].contains("build dependency on `ota`"));
        assert!(v[1].contains("`ota`") && v[1].contains("dev dependency on `dp`"));
        assert!(v[2].contains("dev dependency on `anyhow`"));
        assert_eq!(
            graph_lines(&ws),
            ["core -> (none)", "dp -> core, ota", "ota -> core [dev: dp]"]
        );
        let ok = [
            member("core", &[]),
            member("dp", &[("core", Normal), ("core", Dev)]),
            member("ota", &[("core", Normal)]),
        ];
        assert!(check_deps(&ok, allowed, confined).is_empty());
    }

    #[test]
    fn matrix_reports_unknown_members_and_cycles() {
        use DepKind::*;
        let allowed: &[(&str, &[&str])] = &[("a", &["b"]), ("b", &["a"]), ("gone", &[])];
        let ws = [
            member("a", &[("b", Normal)]),
            member("b", &[("a", Normal)]),
            member("new", &[]),
        ];
        let v = check_deps(&ws, allowed, &[]);
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v[0].contains("matrix itself has a cycle: a -> b -> a"));
        assert!(v[1].contains("`gone` is in tidy's matrix but not"));
        assert!(v[2].contains("`new`") && v[2].contains("not in tidy's matrix"));
        assert!(v[3].contains("dependencies form a cycle"));
    }

    #[test]
    fn the_real_matrix_is_acyclic() {
        assert_eq!(find_cycle(&matrix_graph(ALLOWED_DEPS)), None);
    }

    #[test]
    fn metadata_is_parsed() {
        let meta = serde_json::json!({
            "workspace_members": ["path+file:///w#a@0.1.0", "path+file:///w/b#0.1.0"],
            "packages": [
                {"id": "path+file:///w#a@0.1.0", "name": "a", "manifest_path": "/w/Cargo.toml",
                 "dependencies": [
                    {"name": "b", "kind": null, "rename": "bee"},
                    {"name": "cc", "kind": "build"},
                    {"name": "anyhow", "kind": "dev"}]},
                {"id": "path+file:///w/b#0.1.0", "name": "b", "manifest_path": "/w/b/Cargo.toml",
                 "dependencies": []},
                {"id": "registry+x#cc@1.0.0", "name": "cc", "manifest_path": "/r/cc/Cargo.toml",
                 "dependencies": []}
            ]
        });
        let ws = parse_metadata(&meta, Path::new("/w")).expect("parses");
        assert_eq!(ws.len(), 2);
        assert_eq!(ws[0].manifest, "Cargo.toml");
        let deps: Vec<(&str, DepKind)> = ws[0]
            .deps
            .iter()
            .map(|d| (d.name.as_str(), d.kind))
            .collect();
        assert_eq!(
            deps,
            [
                ("b", DepKind::Normal),
                ("cc", DepKind::Build),
                ("anyhow", DepKind::Dev)
            ]
        );
    }
}

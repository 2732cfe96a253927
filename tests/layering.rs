//! The map in `src/lib.rs` is a contract: modules are layered, and a
//! module may only use the modules below it. This test reads every
//! production source file (test modules and test-only files excluded) as
//! Rust, collects each `crate::<module>` path and each `super::` path that
//! climbs out of its module, and fails on any use of a module at the same
//! level or above — so an upward import, and with it any import cycle,
//! fails CI with the file and the line of thought to fix.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;

/// The layers, lowest first. Each module may use the modules before it.
const LAYERS: &[&str] = &[
    "oci",        // the vocabulary: digests, names, manifests, OCI errors
    "crypto",     // keys and signatures (pure)
    "sigstore",   // Sigstore bundles, certificates, logs (pure)
    "config",     // the YAML shapes and their validation (a leaf)
    "telemetry",  // logging setup
    "policy",     // the policy and its evaluation (pure)
    "metrics",    // the Prometheus registry
    "routing",    // request → route
    "fleet",      // the replicas' shared state (Redis)
    "store",      // the on-disk content store
    "upstream",   // the registry client
    "breakglass", // break-glass credentials and their proof
    "clientauth", // who may pull: htpasswd, tokens, certificates, access
    "verify",     // admission: evidence, verdicts, proofs
    "audit",      // the decision record, its trail and observer
    "alerts",     // webhooks (an audit sink)
    "serve",      // the pull pipeline
    "admin",      // the admin API and dashboard
    "server",     // listeners and connections
    "reload",     // policy hot reload
    "app",        // the composition root
    "cli",        // the command line
];

/// Rust paths that name no module of the crate.
const NOT_MODULES: &[&str] = &[];

/// One use of a module by another.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    file: String,
    from: String,
    to: String,
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .map(|l| l.tokens.to_string().split_whitespace().any(|t| t == "test"))
                .unwrap_or(false)
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The modules `source` (the file of module path `module_path`, e.g.
/// `["verify", "sources"]`) uses outside its own top-level module, and the
/// names of the test-only child module files it declares.
fn uses(source: &str, module_path: &[String]) -> Result<(BTreeSet<String>, Vec<String>), String> {
    let file = syn::parse_file(source).map_err(|e| e.to_string())?;
    let mut used = BTreeSet::new();
    let mut test_children = Vec::new();
    for item in &file.items {
        if is_cfg_test(item_attrs(item)) {
            if let syn::Item::Mod(m) = item {
                test_children.push(m.ident.to_string());
            }
            continue;
        }
        scan(item.to_token_stream(), module_path, &mut used);
    }
    Ok((used, test_children))
}

/// Collects `crate :: m` and `super :: … :: m` (climbing to the crate
/// root) from a token stream, macro bodies included.
fn scan(tokens: TokenStream, module_path: &[String], used: &mut BTreeSet<String>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let ident = |i: usize| match tokens.get(i) {
        Some(TokenTree::Ident(id)) => Some(id.to_string()),
        _ => None,
    };
    let colons = |i: usize| {
        matches!((tokens.get(i), tokens.get(i + 1)),
            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':')
    };
    let mut i = 0;
    while i < tokens.len() {
        if let TokenTree::Group(g) = &tokens[i] {
            scan(g.stream(), module_path, used);
        }
        match ident(i).as_deref() {
            Some("crate") if colons(i + 1) => {
                if let Some(m) = ident(i + 3) {
                    used.insert(m);
                }
            }
            Some("super") if i < 2 || !colons(i - 2) => {
                let mut depth = module_path.len();
                let mut j = i;
                while ident(j).as_deref() == Some("super") && colons(j + 1) {
                    depth = depth.saturating_sub(1);
                    j += 3;
                }
                if depth == 0 {
                    if let Some(m) = ident(j) {
                        used.insert(m);
                    }
                }
                // `pub(super)` and friends: no path follows.
                i = j.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
}

/// Every module file under `dir` with its module path (`mod.rs` is its
/// folder's module).
fn files(dir: &Path, module: &[String], out: &mut Vec<(PathBuf, Vec<String>)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut child = module.to_vec();
            child.push(name);
            files(&path, &child, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut child = module.to_vec();
            if name != "mod" && !(module.is_empty() && (name == "lib" || name == "main")) {
                child.push(name);
            }
            out.push((path, child));
        }
    }
}

/// Every edge between top-level modules in the crate at `src`.
fn edges(src: &Path) -> Vec<Edge> {
    let mut all = Vec::new();
    files(src, &[], &mut all);
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut parsed = Vec::new();
    for (path, module) in &all {
        let source = std::fs::read_to_string(path).unwrap();
        let (used, tests) =
            uses(&source, module).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for t in tests {
            let mut child = module.clone();
            child.push(t);
            test_only.insert(child);
        }
        parsed.push((path, module, used));
    }
    let mut out = Vec::new();
    for (path, module, used) in parsed {
        // A file of a test-only module (or below one) is test code.
        if (1..=module.len()).any(|n| test_only.contains(&module[..n])) {
            continue;
        }
        let Some(from) = module.first() else { continue };
        for to in used {
            if &to != from && !NOT_MODULES.contains(&to.as_str()) {
                out.push(Edge {
                    file: path.display().to_string(),
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    out.sort();
    out
}

/// The edges that break the layering: upward or sideways, or naming a
/// module the map does not list.
fn violations(edges: &[Edge]) -> Vec<String> {
    edges
        .iter()
        .filter_map(|e| match (rank(&e.from), rank(&e.to)) {
            (Some(from), Some(to)) if to < from => None,
            (None, _) => Some(format!(
                "{}: module `{}` is not in the layer list (tests/layering.rs and src/lib.rs)",
                e.file, e.from
            )),
            (_, None) => Some(format!(
                "{}: `{}` uses `{}`, which is not in the layer list",
                e.file, e.from, e.to
            )),
            _ => Some(format!(
                "{}: `{}` uses `{}`, which is not below it",
                e.file, e.from, e.to
            )),
        })
        .collect()
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges(&src);
    assert!(
        edges.len() > 40,
        "the scan found only {} edges: is it reading the sources?",
        edges.len()
    );
    let bad = violations(&edges);
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn every_top_level_module_is_in_the_layer_list() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(!declared.is_empty());
    for m in &declared {
        assert!(
            rank(m).is_some(),
            "src/lib.rs declares `{m}`, missing from LAYERS"
        );
    }
    for m in LAYERS {
        assert!(
            declared.contains(m),
            "LAYERS lists `{m}`, which src/lib.rs does not declare"
        );
    }
}

/// The checker itself catches what it is for: an upward `use`, a path in
/// an expression or a macro, and a `super::` that climbs out of a module;
/// test code is exempt.
#[test]
fn the_checker_catches_upward_imports() {
    let module = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("use crate::serve::App;", &["verify"], &["serve"]),
        (
            "fn f() { let _ = crate::app::build_quiet; }",
            &["oci"],
            &["app"],
        ),
        (
            "fn f() { tracing::info!(\"{}\", crate::cli::X); }",
            &["oci"],
            &["cli"],
        ),
        (
            "use super::super::serve::Ctx;",
            &["verify", "sources"],
            &["serve"],
        ),
        ("use super::budget::Budget;", &["verify", "sources"], &[]),
        ("use super::serve::Ctx;", &["verify"], &["serve"]),
        ("/// [`crate::serve`] is above.\nfn f() {}", &["oci"], &[]),
        (
            "#[cfg(test)]\nmod tests { use crate::app::X; }",
            &["oci"],
            &[],
        ),
    ];
    for (source, path, expected) in cases {
        let (used, _) = uses(source, &module(path)).unwrap();
        let used: Vec<&str> = used.iter().map(String::as_str).collect();
        assert_eq!(&used, expected, "{source}");
    }
    let upward = [Edge {
        file: "src/oci/mod.rs".into(),
        from: "oci".into(),
        to: "serve".into(),
    }];
    assert_eq!(violations(&upward).len(), 1);
    let downward = [Edge {
        file: "src/serve/mod.rs".into(),
        from: "serve".into(),
        to: "oci".into(),
    }];
    assert!(violations(&downward).is_empty());
}

//! Embeds the workload YAMLs of `configs/workload/` so `workload=NAME` works from any directory.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../../configs/workload");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| (p.file_stem().expect("files have stems").to_string_lossy().into_owned(), p))
        .collect();
    entries.sort();
    let mut code = String::from(
        "/// Built-in workloads: (name, YAML text), sorted by name.\npub static BUILTIN: &[(&str, &str)] = &[\n",
    );
    for (name, path) in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
        let path = path.canonicalize().expect("listed files exist");
        writeln!(code, "    ({name:?}, include_str!({:?})),", path.display().to_string()).expect("writing to a String");
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("workloads.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}

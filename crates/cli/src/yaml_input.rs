//! Where `render -f`, `inject -f` and `inject --streams` read their YAML from: a file, `-` for
//! stdin, or a directory's `*.yaml`, `*.yml` and `*.json` files in name order (not recursive),
//! as `kubectl apply -f DIR` reads them.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// One input text and the name errors call it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The file's path, or `<stdin>`.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// The files `path` stands for (itself, or the YAML files of a directory); `-` stays `-`.
pub fn files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.as_os_str() == "-" {
        return Ok(vec![path.to_owned()]);
    }
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))?
    {
        let p = entry?.path();
        let yaml = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one file, or stdin for `-`.
pub fn read(file: &Path) -> anyhow::Result<Input> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        return Ok(Input {
            name: "<stdin>".to_owned(),
            text,
        });
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(Input {
        name: file.display().to_string(),
        text,
    })
}

/// Every input `paths` stand for, in order.
pub fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut out = Vec::new();
    for p in paths {
        for file in files(p)? {
            out.push(read(&file)?);
        }
    }
    Ok(out)
}

//! Manifest files: the paths given with `-f` expanded to files, and their text.
//!
//! A path is a file, a directory (searched recursively for `*.yaml` and `*.yml`, in sorted
//! order so that output is stable) or `-` for standard input.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a manifest's text came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// Standard input.
    Stdin,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Stdin => f.write_str("<stdin>"),
        }
    }
}

/// The text of one manifest file.
#[derive(Clone, Debug)]
pub struct ManifestText {
    /// Where it came from.
    pub origin: Origin,
    /// Its content.
    pub text: String,
}

/// A path that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path does not exist or cannot be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not UTF-8 text.
    #[error("is not UTF-8 text (YAML must be UTF-8)")]
    NotUtf8,
    /// A directory held no manifests.
    #[error("holds no *.yaml or *.yml files")]
    EmptyDirectory,
}

/// Expands `paths` to manifest files and reads them. Unreadable paths are returned beside the
/// readable ones, so that one bad path does not hide the problems of the others.
pub fn read_all(paths: &[PathBuf]) -> (Vec<ManifestText>, Vec<(Origin, ReadError)>) {
    let mut texts = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut bytes = Vec::new();
            match std::io::stdin().read_to_end(&mut bytes) {
                Ok(_) => push_text(Origin::Stdin, bytes, &mut texts, &mut errors),
                Err(e) => errors.push((Origin::Stdin, ReadError::Io(e))),
            }
            continue;
        }
        let files = match expand(path) {
            Ok(files) => files,
            Err(e) => {
                errors.push((Origin::File(path.clone()), e));
                continue;
            }
        };
        for file in files {
            match std::fs::read(&file) {
                Ok(bytes) => push_text(Origin::File(file), bytes, &mut texts, &mut errors),
                Err(e) => errors.push((Origin::File(file), ReadError::Io(e))),
            }
        }
    }
    (texts, errors)
}

fn push_text(
    origin: Origin,
    bytes: Vec<u8>,
    texts: &mut Vec<ManifestText>,
    errors: &mut Vec<(Origin, ReadError)>,
) {
    match String::from_utf8(bytes) {
        Ok(text) => texts.push(ManifestText { origin, text }),
        Err(_) => errors.push((origin, ReadError::NotUtf8)),
    }
}

/// The manifest files a path stands for: itself if it is a file, the `*.yaml`/`*.yml` files
/// below it if it is a directory.
///
/// # Errors
/// The path cannot be read, or is a directory without manifests.
pub fn expand(path: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut visited = HashSet::new();
    walk(path, &mut files, &mut visited)?;
    if files.is_empty() {
        return Err(ReadError::EmptyDirectory);
    }
    files.sort();
    Ok(files)
}

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut HashSet<PathBuf>,
) -> Result<(), ReadError> {
    // A symlink back up the tree would otherwise be walked forever.
    if !visited.insert(std::fs::canonicalize(dir)?) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        // Follow symlinks as kubectl does; metadata() fails on a dangling one, which is skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if !hidden {
                walk(&path, files, visited)?;
            }
        } else if is_manifest(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// True for `*.yaml` and `*.yml`.
pub fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_searched_recursively_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/deeper")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        for f in [
            "z.yaml",
            "a.yml",
            "b/deeper/c.yaml",
            "notes.txt",
            ".git/x.yaml",
        ] {
            std::fs::write(root.join(f), "a: 1\n").unwrap();
        }
        let files = expand(root).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yml", "b/deeper/c.yaml", "z.yaml"]);
    }

    #[test]
    fn symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "a: 1\n").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
        assert_eq!(expand(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn unreadable_paths_are_reported_beside_readable_ones() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, "a: 1\n").unwrap();
        let binary = dir.path().join("binary.yaml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let (texts, errors) =
            read_all(&[good.clone(), dir.path().join("missing.yaml"), binary, empty]);
        assert_eq!(texts.len(), 1);
        assert_eq!(texts[0].origin, Origin::File(good));
        let messages: Vec<_> = errors.iter().map(|(_, e)| e.to_string()).collect();
        assert!(messages[0].starts_with("cannot read:"), "{messages:?}");
        assert_eq!(messages[1], "is not UTF-8 text (YAML must be UTF-8)");
        assert_eq!(messages[2], "holds no *.yaml or *.yml files");
    }
}

//! Where desired objects come from. For now: manifest files (a file, a directory, standard
//! input), read and validated into typed objects, and the nodes `corral plan` plans for.

pub mod files;
pub mod nodes;
pub mod watch;
pub mod yaml;

use std::path::PathBuf;

use crate::validate::{Manifests, Memo, Validator};

/// Reads and validates the manifests at `paths` (files, directories, `-` for stdin).
pub fn load(paths: &[PathBuf]) -> Manifests {
    load_with(paths, &mut Memo::default())
}

/// As [`load`], re-checking only the files whose text changed since `memo` was last used
/// (see [`Memo`]).
pub fn load_with(paths: &[PathBuf], memo: &mut Memo) -> Manifests {
    let (texts, unreadable) = files::read_all(paths);
    // Building the validator generates both CRDs and compiles their CEL rules: several
    // milliseconds that every edit `corral run` follows would otherwise pay again.
    thread_local! {
        static VALIDATOR: Validator = Validator::new();
    }
    VALIDATOR.with(|v| v.check_with(&texts, &unreadable, memo))
}

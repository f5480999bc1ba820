//! Reading an ext4 image without mounting it, through e2fsprogs' debugfs.

use std::path::Path;
use std::process::Command;

use crate::exec::run;

/// The content of `path` inside the ext4 image, or an error naming both.
pub fn cat(image: &Path, path: &str) -> Result<String, String> {
    // debugfs exits 0 even when the file is missing: check with stat first.
    let kind = file_type(image, path)?;
    if kind != "regular" {
        return Err(format!(
            "{}: {path} is a {kind}, not a file",
            image.display()
        ));
    }
    let o = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image))?;
    Ok(o.stdout)
}

/// "regular", "symlink", "directory", ... for `path` in the image.
pub fn file_type(image: &Path, path: &str) -> Result<String, String> {
    let o = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image))?;
    o.stdout
        .lines()
        .find_map(|l| {
            l.split("Type: ")
                .nth(1)
                .map(|t| t.split_whitespace().next().unwrap_or("").to_string())
        })
        .ok_or_else(|| format!("{}: {path} not found in the image", image.display()))
}

/// Where a symlink in the image points.
pub fn link_target(image: &Path, path: &str) -> Result<String, String> {
    let o = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image))?;
    if let Some(t) = o
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
    {
        return Ok(t.trim_matches('"').to_string());
    }
    // Targets of 60 bytes or more live in a data block: cat prints them.
    if file_type(image, path)? != "symlink" {
        return Err(format!("{}: {path} is not a symlink", image.display()));
    }
    let o = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image))?;
    Ok(o.stdout)
}

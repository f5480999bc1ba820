//! The guest's distribution packages, listed once in image-build/packages.txt:
//! every row names a package for every base (or "-" with a reason), and each
//! base's bootstrap installs exactly its column, so the product base never
//! silently lacks what the vehicle base has. Dry runs only: no root, no
//! mirror.

use std::path::{Path, PathBuf};
use std::process::Command;

use avf_image_checks::exec::{run, Outcome};
use avf_image_checks::repo_root;

struct Row {
    line: usize,
    what: String,
    kernel: String,
    /// One package (or "-") per base, in the header's order.
    pkgs: Vec<String>,
    why: String,
}

struct Table {
    bases: Vec<String>,
    rows: Vec<Row>,
}

fn packages_file() -> PathBuf {
    repo_root().join("image-build/packages.txt")
}

fn table() -> Table {
    let path = packages_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, header) = lines.next().expect("packages.txt: no header row");
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert!(
        cols.len() >= 4
            && cols[0] == "what"
            && cols[1] == "kernel"
            && cols[cols.len() - 1] == "why",
        "packages.txt header must be `what kernel <base>... why`, is {header:?}"
    );
    let bases: Vec<String> = cols[2..cols.len() - 1]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows = lines
        .map(|(line, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(
                f.len() >= 2 + bases.len(),
                "packages.txt line {line}: {} columns, want what, kernel and one per base ({bases:?})",
                f.len()
            );
            Row {
                line,
                what: f[0].to_string(),
                kernel: f[1].to_string(),
                pkgs: f[2..2 + bases.len()].iter().map(|s| s.to_string()).collect(),
                why: f[2 + bases.len()..].join(" "),
            }
        })
        .collect();
    Table { bases, rows }
}

/// The bases there are: image-build/bases/<name>.sh.
fn base_files() -> Vec<String> {
    let dir = repo_root().join("image-build/bases");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sh"))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_row_names_a_package_for_every_base() {
    let t = table();
    let mut cols = t.bases.clone();
    cols.sort();
    assert_eq!(
        cols,
        base_files(),
        "packages.txt needs exactly one column per image-build/bases/*.sh"
    );
    assert!(
        t.rows.len() >= 10,
        "packages.txt has only {} rows",
        t.rows.len()
    );
    let mut seen = std::collections::HashSet::new();
    for r in &t.rows {
        let at = format!("packages.txt line {} ({})", r.line, r.what);
        assert!(seen.insert(&r.what), "{at}: `what` repeats an earlier row");
        assert!(
            r.kernel == "any" || r.kernel == "stock",
            "{at}: kernel must be any or stock, not {:?}",
            r.kernel
        );
        assert!(
            r.pkgs.iter().any(|p| p != "-"),
            "{at}: no base has a package for it"
        );
        for (base, p) in t.bases.iter().zip(&r.pkgs) {
            assert!(
                p == "-"
                    || p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c)),
                "{at}: {base}: {p:?} is not a package name"
            );
            if p == "-" {
                assert!(
                    r.why.contains(&format!("{base}:")),
                    "{at}: {base} has no package, so `why` must say why (\"{base}: ...\"), is {:?}",
                    r.why
                );
            }
        }
    }
}

/// What `10-build-rootfs.sh --dry-run` prints for BASE and KERNEL.
fn stage10_dry_run(base: &str, kernel: &str, packages: Option<&Path>) -> Outcome {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = Command::new(repo_root().join("image-build/10-build-rootfs.sh"));
    c.args(["--base", base, "--kernel", kernel, "--dry-run"])
        .env("AVF_OUT", out.path())
        .env("AVF_CACHE", cache.path());
    if let Some(p) = packages {
        c.env("AVF_PACKAGES", p);
    }
    run(&mut c).unwrap()
}

/// The packages a base's printed bootstrap command installs, in order.
fn bootstrapped(base: &str, stdout: &str) -> Vec<String> {
    let find = |needle: &str| -> &str {
        stdout
            .lines()
            .find_map(|l| l.split_once(needle).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("{base}: no {needle:?} in the dry run:\n{stdout}"))
    };
    match base {
        // mmdebstrap --include=a\,b\,c (shell-quoted by the dry run).
        "debian" => find("--include=")
            .split_whitespace()
            .next()
            .unwrap()
            .replace('\\', "")
            .split(',')
            .map(str::to_string)
            .collect(),
        "archlinuxarm" => find(" pacman -Syu --noconfirm --needed ")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        other => panic!("teach this test how base {other} installs its packages"),
    }
}

#[test]
fn each_base_bootstraps_exactly_its_column() {
    let t = table();
    for (i, base) in t.bases.iter().enumerate() {
        for kernel in ["avf", "stock"] {
            let mut want: Vec<String> = Vec::new();
            for r in &t.rows {
                let p = &r.pkgs[i];
                if p != "-" && (r.kernel == "any" || kernel == "stock") && !want.contains(p) {
                    want.push(p.clone());
                }
            }
            let o = stage10_dry_run(base, kernel, None);
            assert_eq!(
                o.code,
                Some(0),
                "{base} --kernel {kernel} dry run: {}",
                o.stderr
            );
            assert_eq!(
                bootstrapped(base, &o.stdout),
                want,
                "{base} --kernel {kernel}: the bootstrap must install its packages.txt column, in order"
            );
        }
    }
}

/// A "-" without its reason is refused by the build too, naming the row.
#[test]
fn a_missing_package_without_reason_is_refused() {
    let t = table();
    let r = t
        .rows
        .iter()
        .find(|r| r.pkgs.iter().any(|p| p == "-"))
        .expect("a row with a \"-\"");
    let text = std::fs::read_to_string(packages_file()).unwrap();
    let edited: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == r.line {
                format!("{} {} {}", r.what, r.kernel, r.pkgs.join(" "))
            } else {
                l.to_string()
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("packages.txt");
    std::fs::write(&file, edited.join("\n") + "\n").unwrap();
    let o = stage10_dry_run(&t.bases[0], "avf", Some(&file));
    assert_ne!(o.code, Some(0), "accepted a \"-\" without a why");
    let last = o.last_err_line();
    assert!(
        last.contains(": error: ")
            && last.contains(&format!("line {}: row \"{}\"", r.line, r.what))
            && last.contains("needs a why"),
        "last line: {last:?}\n{}",
        o.stderr
    );
}

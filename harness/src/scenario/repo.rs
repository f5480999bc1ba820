//! A package repository the harness serves to the guest, in the format of
//! the guest's own package manager, and the install from it: what a user
//! does on the phone with the network the app gives (`apt` on the Debian
//! vehicle, `pacman` with our repository on Arch Linux ARM).
//!
//! The repository is built on the host with the distributions' own tools
//! (`dpkg-deb` + `dpkg-scanpackages`; for pacman, `out/repo` as
//! `repo-add` made it) and served by a small static HTTP server bound on
//! the host's side of the guest network (its namespace in the TAP mode).

use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use avf_terminal::netns::GuestNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::guest::guest_sh;
use super::model::{KernelUpdate, PackageInstall};
use crate::vm::Vm;

/// A static HTTP/1.0 server of one directory (GET only, no listing);
/// stops when dropped.
pub struct Served {
    pub url: String,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `path` of a request under `root`, or `None` when it leaves it.
fn confined(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.split('?').next()?.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    Some(root.join(rel))
}

async fn answer(mut sock: tokio::net::TcpStream, root: PathBuf) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // No symlinks are followed out of the repository: only regular files.
    let file = confined(&root, path)
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file()));
    match (method, file) {
        ("GET" | "HEAD", Some(f)) => {
            let body = tokio::fs::read(&f).await?;
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            if method == "GET" {
                sock.write_all(&body).await?;
            }
        }
        _ => {
            sock.write_all(
                b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?
        }
    }
    sock.shutdown().await
}

/// Serves `root` where the guest reaches the host.
pub fn serve(vm: &Vm, root: &Path) -> Result<Served> {
    let net = match vm.netns() {
        Some(p) => GuestNet::Namespace(p),
        None => GuestNet::Current,
    };
    let listener = net
        .tcp_listen(vm.host_bind(0))
        .context("binding the repository's HTTP server")?;
    let port = listener.local_addr()?.port();
    let url = format!("http://{}:{port}", vm.gateway());
    let root = root.to_owned();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(answer(sock, root.clone()));
        }
    });
    Ok(Served { url, task })
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A one-package apt repository (flat: `Packages` beside the `.deb`) in
/// `dir`: `package` 1.0, architecture all, one file
/// `/usr/share/<package>/installed-from-the-harness`.
pub fn build_apt_repo(dir: &Path, package: &str) -> Result<()> {
    let tree = dir.join("src");
    let share = tree.join("usr/share").join(package);
    std::fs::create_dir_all(tree.join("DEBIAN"))?;
    std::fs::create_dir_all(&share)?;
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: arch-avf <arch-avf@localhost>\nDescription: served by the arch-avf harness to test the guest's package manager\n"
        ),
    )?;
    std::fs::write(share.join("installed-from-the-harness"), b"ok\n")?;
    let pool = dir.join("repo");
    std::fs::create_dir_all(&pool)?;
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(pool.join(format!("{package}_1.0_all.deb"))))?;
    scan_apt_pool(&pool)
}

/// `dpkg-scanpackages` over `pool`, into `pool/Packages` (a flat apt
/// repository).
fn scan_apt_pool(pool: &Path) -> Result<()> {
    let out = Command::new("dpkg-scanpackages")
        .args(["--multiversion", "."])
        .current_dir(pool)
        .output()
        .context("running dpkg-scanpackages (dpkg-dev)")?;
    if !out.status.success() {
        bail!(
            "dpkg-scanpackages: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::write(pool.join("Packages"), &out.stdout)?;
    Ok(())
}

/// The step: build and serve the repository, then the guest's package
/// manager installs from it (only from it: the phone's network may have
/// no route to the distribution's mirrors).
pub async fn package_install(vm: &Vm, s: &PackageInstall) -> Result<String> {
    let has = |cmd: &'static str| async move {
        guest_sh(
            vm,
            &format!("command -v {cmd} >/dev/null && echo yes || echo no"),
        )
        .await
        .map(|o| o.trim() == "yes")
    };
    let scratch = tempfile::tempdir().context("a scratch dir for the repository")?;
    let t0 = Instant::now();
    let (served, script) = if has("apt-get").await? {
        build_apt_repo(scratch.path(), &s.package)?;
        let served = serve(vm, &scratch.path().join("repo"))?;
        let script = format!(
            r#"set -e
list=/etc/apt/sources.list.d/avf-harness.list
echo "deb [trusted=yes] {url} ./" > "$list"
only="-o Dir::Etc::sourcelist=$list -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
apt-get $only -q update
DEBIAN_FRONTEND=noninteractive apt-get $only -q -y install {pkg}
rm -f "$list"
dpkg-query -W -f '${{Status}} ${{Version}}\n' {pkg}
cat /usr/share/{pkg}/installed-from-the-harness"#,
            url = served.url,
            pkg = s.package
        );
        (served, script)
    } else if has("pacman").await? {
        // Our own repository, as repo-add made it (out/repo/aarch64).
        let repo = crate::payload::out_dir().join("repo/aarch64");
        if !repo.join("avf.db").exists() {
            bail!(
                "{}: no pacman repository (build it with image-build/build-all.sh)",
                repo.display()
            );
        }
        let served = serve(vm, &repo)?;
        let script = format!(
            r#"set -e
conf=$(mktemp)
sed '/^\[/,$d' /etc/pacman.conf > "$conf"
printf '[avf]\nSigLevel = Optional TrustAll\nServer = {url}\n' >> "$conf"
pacman --config "$conf" --noconfirm -Sy {pkg}
rm -f "$conf"
pacman -Q {pkg}"#,
            url = served.url,
            pkg = s.package
        );
        (served, script)
    } else {
        bail!("the guest has neither apt-get nor pacman");
    };
    let out = guest_sh(vm, &script)
        .await
        .with_context(|| format!("installing {} from {}", s.package, served.url))?;
    let last = out.lines().last().unwrap_or_default().to_string();
    Ok(format!(
        "{} installed from {} in {:.1} s: {}",
        s.package,
        served.url,
        t0.elapsed().as_secs_f64(),
        out.lines().rev().nth(1).unwrap_or(&last)
    ))
}

/// The built linux-avf package (not the headers) in our pacman repository.
fn built_linux_avf(repo: &Path) -> Result<PathBuf> {
    let found: Vec<PathBuf> = std::fs::read_dir(repo)
        .with_context(|| {
            format!(
                "{}: no package repository (build it with image-build/build-all.sh --kernel avf)",
                repo.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("linux-avf-")
                    && !n.starts_with("linux-avf-headers-")
                    && n.ends_with(".pkg.tar.zst")
            })
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{}: no linux-avf-*.pkg.tar.zst (build with image-build/build-all.sh --kernel avf)",
            repo.display()
        ),
        _ => bail!("{}: more than one linux-avf package", repo.display()),
    }
}

/// `kernel/repack.sh`: the built linux-avf under package release `pkgrel`,
/// in `format` (pacman or deb), into `dir`; returns the file.
fn repack_kernel(pkg: &Path, pkgrel: u32, format: &str, dir: &Path) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel/repack.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--pkgrel", &pkgrel.to_string(), "--format", format])
        .arg(pkg)
        .arg(dir)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(path))
}

/// The step: linux-avf repackaged under a newer package release, served,
/// and upgraded by the guest's package manager (apt on the Debian vehicle,
/// pacman on Arch Linux ARM), whose hooks decide what the next start boots.
/// The note carries the package manager's output (the hook's message).
pub async fn kernel_update(vm: &Vm, s: &KernelUpdate) -> Result<String> {
    let has = |cmd: &'static str| async move {
        guest_sh(
            vm,
            &format!("command -v {cmd} >/dev/null && echo yes || echo no"),
        )
        .await
        .map(|o| o.trim() == "yes")
    };
    let built = built_linux_avf(&crate::payload::out_dir().join("repo/aarch64"))?;
    let scratch = tempfile::tempdir().context("a scratch dir for the repository")?;
    let pool = scratch.path().join("repo");
    std::fs::create_dir_all(&pool)?;
    let repack = |format| {
        repack_kernel(&built, s.pkgrel, format, &pool)
            .with_context(|| format!("kernel_update.pkgrel = {}", s.pkgrel))
    };
    let t0 = Instant::now();
    let (served, script) = if has("apt-get").await? {
        repack("deb")?;
        scan_apt_pool(&pool)?;
        let served = serve(vm, &pool)?;
        let script = format!(
            r#"set -e
list=/etc/apt/sources.list.d/avf-harness.list
echo "deb [trusted=yes] {url} ./" > "$list"
only="-o Dir::Etc::sourcelist=$list -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
apt-get $only -q update >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get $only -q -y install linux-avf 2>&1
rm -f "$list"
dpkg-query -W -f '${{Version}}
' linux-avf"#,
            url = served.url
        );
        (served, script)
    } else if has("pacman").await? {
        let file = repack("pacman")?;
        run(Command::new("repo-add")
            .arg("-q")
            .arg(pool.join("avf.db.tar.gz"))
            .arg(&file))?;
        let served = serve(vm, &pool)?;
        let script = format!(
            r#"set -e
conf=$(mktemp)
sed '/^\[/,$d' /etc/pacman.conf > "$conf"
printf '[avf]\nSigLevel = Optional TrustAll\nServer = {url}\n' >> "$conf"
pacman --config "$conf" --noconfirm -Sy linux-avf 2>&1
rm -f "$conf"
pacman -Q linux-avf | cut -d' ' -f2"#,
            url = served.url
        );
        (served, script)
    } else {
        bail!("the guest has neither apt-get nor pacman");
    };
    let out = guest_sh(vm, &script)
        .await
        .with_context(|| format!("upgrading linux-avf from {}", served.url))?;
    if let Some(re) = &s.output_matches {
        if !regex::Regex::new(re)?.is_match(&out) {
            bail!("the package manager's output does not match /{re}/:\n{out}");
        }
    }
    let version = out.lines().last().unwrap_or_default().trim().to_string();
    let hook: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("avf kernel-update") || l.starts_with("***"))
        .collect();
    Ok(format!(
        "linux-avf {version} installed from {} in {:.1} s; hook: {}",
        served.url,
        t0.elapsed().as_secs_f64(),
        hook.join(" | ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_in_the_repository() {
        let root = Path::new("/srv/repo");
        assert_eq!(
            confined(root, "/Packages"),
            Some(PathBuf::from("/srv/repo/Packages"))
        );
        assert_eq!(
            confined(root, "/./a.deb?x=1"),
            Some(PathBuf::from("/srv/repo/a.deb"))
        );
        assert_eq!(confined(root, "/../etc/shadow"), None);
        assert_eq!(confined(root, "/a/../../b"), None);
    }

    #[test]
    fn builds_an_apt_repository_with_the_debian_tools() {
        let d = tempfile::tempdir().unwrap();
        build_apt_repo(d.path(), "avf-repo-probe").unwrap();
        let packages = std::fs::read_to_string(d.path().join("repo/Packages")).unwrap();
        assert!(packages.contains("Package: avf-repo-probe"), "{packages}");
        assert!(
            packages.contains("Filename: ./avf-repo-probe_1.0_all.deb"),
            "{packages}"
        );
    }

    /// A stand-in linux-avf package: what `kernel/repack.sh` reads.
    fn fake_linux_avf(dir: &Path) -> PathBuf {
        let tree = dir.join("tree");
        let modules = tree.join("usr/lib/modules/6.1.192-avf");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::create_dir_all(tree.join("boot")).unwrap();
        std::fs::write(modules.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(modules.join("pkgbase"), b"linux-avf\n").unwrap();
        std::fs::write(tree.join("boot/Image"), b"kernel").unwrap();
        std::fs::write(
            tree.join(".PKGINFO"),
            "pkgname = linux-avf\npkgver = 6.1.192-1\narch = aarch64\n",
        )
        .unwrap();
        let pkg = dir.join("linux-avf-6.1.192-1-aarch64.pkg.tar.zst");
        run(Command::new("bsdtar")
            .args(["--zstd", "-cf"])
            .arg(&pkg)
            .arg("-C")
            .arg(&tree)
            .args([".PKGINFO", "usr", "boot"]))
        .unwrap();
        pkg
    }

    #[test]
    fn repacks_the_kernel_under_a_new_pkgrel_without_the_esp() {
        let d = tempfile::tempdir().unwrap();
        let pkg = fake_linux_avf(d.path());
        assert_eq!(built_linux_avf(d.path()).unwrap(), pkg);

        let deb = repack_kernel(&pkg, 3, "deb", &d.path().join("out")).unwrap();
        assert!(deb.ends_with("linux-avf_6.1.192-3_arm64.deb"), "{deb:?}");
        let field = |f: &str| {
            let o = Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .arg(f)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        assert_eq!(field("Version"), "6.1.192-3");
        assert_eq!(field("Package"), "linux-avf");
        let list = Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            list.contains("./usr/lib/modules/6.1.192-avf/vmlinuz"),
            "{list}"
        );
        assert!(!list.contains("./boot"), "{list}");
        let post = Command::new("dpkg-deb")
            .args(["-I"])
            .arg(&deb)
            .arg("postinst")
            .output()
            .unwrap();
        let post = String::from_utf8_lossy(&post.stdout);
        assert!(
            post.contains("--arg=6.1.192-avf --arg=/usr/lib/modules/6.1.192-avf/vmlinuz /etc/kernel/postinst.d"),
            "{post}"
        );

        let pac = repack_kernel(&pkg, 3, "pacman", &d.path().join("out")).unwrap();
        assert!(
            pac.ends_with("linux-avf-6.1.192-3-aarch64.pkg.tar.zst"),
            "{pac:?}"
        );
        let info = Command::new("bsdtar")
            .arg("-xOf")
            .arg(&pac)
            .arg(".PKGINFO")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("pkgver = 6.1.192-3\n"));

        let e = format!("{:#}", repack_kernel(&pkg, 0, "deb", d.path()).unwrap_err());
        assert!(e.contains("--pkgrel"), "{e}");
        // Not newer than the built 6.1.192-1: an update that would not happen.
        for format in ["deb", "pacman"] {
            let e = format!(
                "{:#}",
                repack_kernel(&pkg, 1, format, d.path()).unwrap_err()
            );
            assert!(
                e.contains("--pkgrel 1 is not newer") && e.contains("6.1.192-1"),
                "{e}"
            );
        }
        let e = format!("{:#}", built_linux_avf(&d.path().join("none")).unwrap_err());
        assert!(e.contains("none"), "{e}");
    }
}

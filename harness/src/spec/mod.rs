//! vm_config.json: the lenient serde model (`raw`), placeholder expansion and
//! validation into the typed [`VmSpec`] the planner consumes.

mod raw;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

pub use raw::RawConfig;
use uuid::Uuid;

/// A vm_config.json problem: which file, which field, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}`: {}",
            self.file.display(),
            self.field,
            self.problem
        )
    }
}

impl std::error::Error for SpecError {}

/// Where the `$PAYLOAD_DIR` / `$APP_DATA_DIR` placeholders point, and where
/// phone-absolute paths (e.g. `/storage/emulated`) live on this host.
#[derive(Debug, Clone)]
pub struct Expansion {
    pub payload_dir: PathBuf,
    pub app_data_dir: PathBuf,
    /// Host directory standing in for the phone's `/`; absolute shared paths
    /// are re-rooted here.
    pub phone_root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleDevice {
    /// 16550 UART (crosvm: ns16550a).
    TtyS0,
    /// virtio-console.
    Hvc0,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuTopology {
    MatchHost,
    OneCpu,
}

/// The contract's virtio-fs tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShareTag {
    /// `/storage/emulated` → guest `/mnt/shared`.
    Android,
    /// anything else (the app's files dir) → guest `/mnt/internal`.
    Internal,
}

impl ShareTag {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareTag::Android => "android",
            ShareTag::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub label: String,
    pub path: PathBuf,
    pub writable: bool,
    /// `None` when the config gives none (e.g. KERNEL_EXTRAS); the disk
    /// builder then picks a fresh one, as crosvm does.
    pub guid: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disk {
    Composite {
        partitions: Vec<Partition>,
        writable: bool,
    },
    /// Older shape: a whole raw disk image.
    Image { path: PathBuf, writable: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The path as written in vm_config.json, after placeholder expansion.
    pub config_path: String,
    pub host_dir: PathBuf,
    pub tag: ShareTag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub params: String,
}

/// vm_config.json, validated and expanded.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub source: PathBuf,
    pub name: String,
    pub disks: Vec<Disk>,
    pub shares: Vec<Share>,
    pub kernel: Option<KernelBoot>,
    pub cpu_topology: CpuTopology,
    pub memory_mib: u64,
    pub console_input: ConsoleDevice,
    pub console_out: bool,
    pub network: bool,
    pub auto_memory_balloon: bool,
    pub gpu_backend: Option<String>,
    pub protected: bool,
    pub debuggable: bool,
    /// How long Android 17's app waits for the terminal (`None`: its
    /// default, 60 s).
    pub boot_timeout_secs: Option<u64>,
    /// Fields this harness does not model, kept so nothing is lost.
    pub unknown_fields: serde_json::Map<String, serde_json::Value>,
}

impl VmSpec {
    /// Reads, parses, expands and validates `file`.
    pub fn load(file: &Path, exp: &Expansion) -> Result<VmSpec, SpecError> {
        let text = std::fs::read_to_string(file).map_err(|e| SpecError {
            file: file.to_owned(),
            field: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, file, exp)
    }

    /// Parses `text` as if it were the content of `file`.
    pub fn parse(text: &str, file: &Path, exp: &Expansion) -> Result<VmSpec, SpecError> {
        let raw = RawConfig::parse(text, file)?;
        Validator {
            file: file.to_owned(),
            exp,
        }
        .validate(raw)
    }

    /// The partition with this GPT label, over all disks.
    pub fn partition(&self, label: &str) -> Option<&Partition> {
        self.disks.iter().find_map(|d| match d {
            Disk::Composite { partitions, .. } => partitions.iter().find(|p| p.label == label),
            Disk::Image { .. } => None,
        })
    }

    pub fn share(&self, tag: ShareTag) -> Option<&Share> {
        self.shares.iter().find(|s| s.tag == tag)
    }
}

struct Validator<'a> {
    file: PathBuf,
    exp: &'a Expansion,
}

impl Validator<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.clone(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// Replaces `$PAYLOAD_DIR` and `$APP_DATA_DIR`; any other `$NAME` is an error.
    fn expand(&self, field: &str, value: &str) -> Result<String, SpecError> {
        let mut out = String::new();
        let mut rest = value;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_len];
            let dir = match name {
                "PAYLOAD_DIR" => &self.exp.payload_dir,
                "APP_DATA_DIR" => &self.exp.app_data_dir,
                _ => {
                    return Err(self.err(
                        field,
                        format!(
                        "unknown placeholder `${name}` (expected $PAYLOAD_DIR or $APP_DATA_DIR)"
                    ),
                    ))
                }
            };
            out.push_str(&dir.to_string_lossy());
            rest = &after[name_len..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn abs_path(&self, field: &str, value: &str) -> Result<PathBuf, SpecError> {
        if value.is_empty() {
            return Err(self.err(field, "empty path"));
        }
        let expanded = self.expand(field, value)?;
        let p = PathBuf::from(&expanded);
        if !p.is_absolute() {
            return Err(self.err(
                field,
                format!("relative path `{value}` (expected an absolute path or one starting with $PAYLOAD_DIR)"),
            ));
        }
        Ok(p)
    }

    /// A payload file (partition, kernel, initrd, disk image): `value`
    /// expanded, then confined to `$PAYLOAD_DIR` or `$APP_DATA_DIR` with
    /// no `..`, every component below that root a real directory (never a
    /// link) and the last one a regular file (never a link). A hostile
    /// payload cannot make a host file the guest's disk or kernel this way.
    /// Returns the path normalised (as checked).
    fn confined_file(&self, field: &str, value: &str) -> Result<PathBuf, SpecError> {
        let p = self.abs_path(field, value)?;
        let (root, rel) = self.confine(field, value, &p)?;
        let shown = |at: &Path| format!("{} (from `{value}`)", at.display());
        let n = rel.components().count();
        if n == 0 {
            return Err(self.err(field, format!("{} is not a regular file", shown(&p))));
        }
        let mut at = root;
        for (i, c) in rel.components().enumerate() {
            at.push(c);
            let m = std::fs::symlink_metadata(&at)
                .map_err(|e| self.err(field, format!("{}: {e}", shown(&at))))?;
            let last = i + 1 == n;
            if m.file_type().is_symlink() {
                return Err(self.err(
                    field,
                    format!(
                        "{} is a symlink: payload files are never reached through a link",
                        shown(&at)
                    ),
                ));
            }
            if last && !m.is_file() {
                return Err(self.err(field, format!("{} is not a regular file", shown(&at))));
            }
            if !last && !m.is_dir() {
                return Err(self.err(field, format!("{} is not a directory", shown(&at))));
            }
        }
        // The path as walked: `//`, `/./` and a trailing `/` (which the walk
        // ignores, and an open of a file would not) gone.
        Ok(at)
    }

    /// Which root `p` (the expansion of `value`) lies under, and the rest
    /// of it: component-wise, no `..` anywhere below the root (nor in
    /// `value`). The outermost root that holds `p` is taken, so every
    /// directory below it gets checked.
    fn confine(&self, field: &str, value: &str, p: &Path) -> Result<(PathBuf, PathBuf), SpecError> {
        let dotdot = || {
            self.err(
                field,
                format!("`{value}` has a `..` component (refused: it could leave the payload)"),
            )
        };
        if value.split('/').any(|c| c == "..") {
            return Err(dotdot());
        }
        let mut roots = [&self.exp.app_data_dir, &self.exp.payload_dir];
        roots.sort_by_key(|r| r.components().count());
        for root in roots {
            if let Ok(rel) = p.strip_prefix(root) {
                if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                    return Err(dotdot());
                }
                return Ok((root.clone(), rel.to_owned()));
            }
        }
        Err(self.err(
            field,
            format!(
                "{} (from `{value}`) is outside $PAYLOAD_DIR ({}) and $APP_DATA_DIR ({}): refused",
                p.display(),
                self.exp.payload_dir.display(),
                self.exp.app_data_dir.display()
            ),
        ))
    }

    /// Where a share's directory is on this host: under `$APP_DATA_DIR`
    /// as it is (component-wise: `/x/app2` is not under `/x/app`), any
    /// other absolute path re-rooted under the phone root. A `..` could
    /// leave either, so it is refused.
    fn share_host_dir(&self, field: &str, value: &str, p: &Path) -> Result<PathBuf, SpecError> {
        if value.split('/').any(|c| c == "..") {
            return Err(self.err(
                field,
                format!("`{value}` has a `..` component (refused: a share never leaves its root)"),
            ));
        }
        let (root, rel) = match p.strip_prefix(&self.exp.app_data_dir) {
            Ok(rel) => (&self.exp.app_data_dir, rel),
            Err(_) => (&self.exp.phone_root, p.strip_prefix("/").unwrap_or(p)),
        };
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(self.err(
                field,
                format!("`{value}` has a `..` component (refused: a share never leaves its root)"),
            ));
        }
        Ok(root.join(rel))
    }

    fn validate(&self, raw: RawConfig) -> Result<VmSpec, SpecError> {
        let name = raw
            .name
            .clone()
            .ok_or_else(|| self.err("name", "missing (expected \"debian\")"))?;
        if name != "debian" {
            return Err(self.err(
                "name",
                format!("is {name:?}; the Terminal app looks the VM up by the name \"debian\""),
            ));
        }

        let raw_disks = raw
            .disks
            .as_ref()
            .ok_or_else(|| self.err("disks", "missing (expected a list of disks)"))?;
        if raw_disks.is_empty() {
            return Err(self.err("disks", "empty (expected at least one disk)"));
        }
        let mut disks = Vec::new();
        let mut labels = HashSet::new();
        let mut guids = HashSet::new();
        for (di, d) in raw_disks.iter().enumerate() {
            let writable = d.writable.unwrap_or(false);
            match (&d.partitions, &d.image) {
                (Some(_), Some(_)) => {
                    return Err(self.err(
                        format!("disks[{di}]"),
                        "has both `partitions` and `image` (expected one)",
                    ))
                }
                (None, Some(img)) => disks.push(Disk::Image {
                    path: self.confined_file(&format!("disks[{di}].image"), img)?,
                    writable,
                }),
                (None, None) => {
                    return Err(self.err(
                        format!("disks[{di}].partitions"),
                        "missing (expected a list of partitions)",
                    ))
                }
                (Some(parts), None) => {
                    if parts.is_empty() {
                        return Err(self.err(
                            format!("disks[{di}].partitions"),
                            "empty (expected at least one partition)",
                        ));
                    }
                    let mut partitions = Vec::new();
                    for (pi, p) in parts.iter().enumerate() {
                        let f = |k: &str| format!("disks[{di}].partitions[{pi}].{k}");
                        let label = p
                            .label
                            .clone()
                            .ok_or_else(|| self.err(f("label"), "missing (expected a GPT name)"))?;
                        if label.is_empty() || label.encode_utf16().count() > 36 {
                            return Err(self.err(f("label"), "expected 1 to 36 UTF-16 code units"));
                        }
                        if !labels.insert(label.clone()) {
                            return Err(self.err(f("label"), format!("duplicate label {label:?}")));
                        }
                        let path_s = p
                            .path
                            .as_deref()
                            .ok_or_else(|| self.err(f("path"), "missing (expected a file path)"))?;
                        let path = self.confined_file(&f("path"), path_s)?;
                        let guid = match p.guid.as_deref() {
                            None => None,
                            Some(g) => {
                                let trimmed = g.trim_start_matches('{').trim_end_matches('}');
                                let u = Uuid::parse_str(trimmed).map_err(|_| {
                                    self.err(
                                        f("guid"),
                                        format!("{g:?} is not a GUID (placeholder not filled in?)"),
                                    )
                                })?;
                                if !guids.insert(u) {
                                    return Err(self.err(f("guid"), format!("duplicate GUID {u}")));
                                }
                                Some(u)
                            }
                        };
                        partitions.push(Partition {
                            label,
                            path,
                            writable: p.writable.unwrap_or(false),
                            guid,
                        });
                    }
                    disks.push(Disk::Composite {
                        partitions,
                        writable,
                    });
                }
            }
        }

        let mut shares = Vec::new();
        for (si, s) in raw.shared_path.iter().flatten().enumerate() {
            let field = format!("sharedPath[{si}].sharedPath");
            let v = s
                .shared_path
                .as_deref()
                .ok_or_else(|| self.err(&field, "missing (expected a directory path)"))?;
            let config_path = self.expand(&field, v)?;
            if !Path::new(&config_path).is_absolute() {
                return Err(self.err(&field, format!("relative path `{v}` (expected absolute)")));
            }
            // crosvm/virtmgr: only /storage/emulated is `android`; all else `internal`.
            let tag = if config_path.trim_end_matches('/') == "/storage/emulated" {
                ShareTag::Android
            } else {
                ShareTag::Internal
            };
            if shares.iter().any(|x: &Share| x.tag == tag) {
                return Err(self.err(
                    &field,
                    format!("duplicate virtio-fs tag `{}`", tag.as_str()),
                ));
            }
            let host_dir = self.share_host_dir(&field, v, Path::new(&config_path))?;
            shares.push(Share {
                config_path,
                host_dir,
                tag,
            });
        }

        let kernel = match (&raw.kernel, &raw.initrd) {
            (None, Some(_)) => {
                return Err(self.err(
                    "initrd",
                    "given without `kernel` (expected both or neither)",
                ))
            }
            (None, None) => {
                if raw.bootloader.is_some() {
                    return Err(self.err(
                        "bootloader",
                        "custom bootloaders are not supported (the phone uses its U-Boot)",
                    ));
                }
                None
            }
            (Some(k), i) => Some(KernelBoot {
                kernel: self.confined_file("kernel", k)?,
                initrd: i
                    .as_deref()
                    .map(|i| self.confined_file("initrd", i))
                    .transpose()?,
                params: raw.params.clone().unwrap_or_default(),
            }),
        };

        let cpu_topology = match raw.cpu_topology.as_deref() {
            None | Some("match_host") => CpuTopology::MatchHost,
            Some("one_cpu") => CpuTopology::OneCpu,
            Some(o) => {
                return Err(self.err(
                    "cpu_topology",
                    format!("unknown value {o:?} (expected \"match_host\" or \"one_cpu\")"),
                ))
            }
        };
        let memory_mib = raw.memory_mib.unwrap_or(1024);
        if !(64..=1 << 20).contains(&memory_mib) {
            return Err(self.err(
                "memory_mib",
                format!("{memory_mib} out of range (expected 64 ..= 1048576)"),
            ));
        }
        let console_input = match raw.console_input_device.as_deref() {
            None | Some("ttyS0") => ConsoleDevice::TtyS0,
            Some("hvc0") => ConsoleDevice::Hvc0,
            Some(o) => {
                return Err(self.err(
                    "console_input_device",
                    format!("unknown console device {o:?} (expected \"ttyS0\" or \"hvc0\")"),
                ))
            }
        };
        let gpu_backend = match &raw.gpu {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Object(m)) => Some(match m.get("backend") {
                None => "2d".to_string(),
                Some(serde_json::Value::String(b)) => b.clone(),
                Some(_) => return Err(self.err("gpu.backend", "expected a string")),
            }),
            Some(_) => return Err(self.err("gpu", "expected an object like {\"backend\": \"2d\"}")),
        };

        // Gson reads an Int; the app then waits that long (× 10 on
        // emulators): zero or less could never boot.
        let boot_timeout_secs = match raw.boot_timeout_secs {
            None => None,
            Some(t) if (1..=i64::from(i32::MAX)).contains(&t) => Some(t as u64),
            Some(t) => {
                return Err(self.err(
                    "boot_timeout_secs",
                    format!("{t} out of range (expected 1 ..= {})", i32::MAX),
                ))
            }
        };
        Ok(VmSpec {
            source: self.file.clone(),
            name,
            disks,
            shares,
            kernel,
            cpu_topology,
            memory_mib,
            console_input,
            console_out: raw.console_out.unwrap_or(false),
            network: raw.network.unwrap_or(false),
            auto_memory_balloon: raw.auto_memory_balloon.unwrap_or(false),
            gpu_backend,
            protected: raw.protected.unwrap_or(false),
            debuggable: raw.debuggable.unwrap_or(false),
            boot_timeout_secs,
            unknown_fields: raw.extra,
        })
    }
}

//! The Terminal app's start sequence, which is how the harness starts every
//! payload under a host profile: install (→ `completed`) → the upgrade gate
//! (`MainActivity`, `InstalledImage.isOlderThanCurrentVersion`) → the
//! pre-boot disk steps on `root_part` (`VmLauncherService.doStart`,
//! `InstalledImage`) → vm_config.json as the app overrides it
//! (`VmLauncherService.overrideConfigIfNecessary`, `ConfigJson`) → launch.
//! Discovery, gRPC and ttyd follow in the app's host side
//! ([`crate::scenario::terminal`]).
//!
//! Every outcome the app would show instead of a terminal is a typed error
//! (e.g. [`avf_terminal::profile::UpgradeScreen`]) a scenario can assert.

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use avf_terminal::installed_image::{self, DiskStep, InstalledImage};

use crate::payload::Instance;
use crate::plan::Options;
use crate::spec::{Disk, ShareTag, VmSpec};

/// The app's error screen when ttyd is not found in time (Android 16
/// `VmLauncherService.doStart`'s boot timeout): a typed outcome a
/// scenario can assert, like [`avf_terminal::profile::UpgradeScreen`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("the {release} Terminal app would show its error screen: ttyd not found {after:?} after the VM started; its deadline is {app_deadline:?} × {factor:.1} (TCG) = {deadline:?}")]
pub struct DiscoveryTimeout {
    pub release: &'static str,
    /// When ttyd was found, since the guest started.
    pub after: std::time::Duration,
    pub app_deadline: std::time::Duration,
    pub factor: f64,
    pub deadline: std::time::Duration,
}

/// The phone's `/data` size when a scenario gives none (a 128 GB phone):
/// the pre-boot steps compare `root_part` against a share of it.
pub const DEFAULT_PHONE_STORAGE_GIB: u64 = 128;

/// What the app did before it launched the VM.
#[derive(Debug, Default, Clone)]
pub struct Started {
    /// The pre-boot disk commands on `root_part`, with their exit codes.
    pub disk_steps: Vec<DiskStep>,
}

impl Started {
    /// One line per command, for `pre-boot.log` and notes.
    pub fn log(&self) -> String {
        self.disk_steps.iter().map(|s| format!("{s}\n")).collect()
    }
}

/// The app's checks and disk steps on an installed payload, before its
/// vm_config.json is read: a payload the app would refuse never boots here
/// either.
/// `disk_size`: a size the user chose in the settings (else the app keeps
/// the current one).
pub fn before_launch(
    instance: &Instance,
    options: &Options,
    disk_size: Option<u64>,
    log: &Path,
) -> Result<Started> {
    if !instance.is_installed() {
        return Err(anyhow!(
            "{}: no `completed` marker: the app would install the image again",
            instance.payload_dir.display()
        ));
    }
    if let Some(b) = &options.installed_build_id {
        let f = instance.payload_dir.join("build_id");
        std::fs::write(&f, format!("{b}\n")).with_context(|| format!("writing {}", f.display()))?;
    }
    gate(instance, &options.profile)?;
    android17_cidata(instance, options)?;
    let root = instance.payload_dir.join(installed_image::ROOT_PART);
    let mut disk_steps = Vec::new();
    if root.is_file() {
        let image = InstalledImage::new(&instance.payload_dir)?;
        let phone = options
            .phone_storage_gib
            .unwrap_or(DEFAULT_PHONE_STORAGE_GIB)
            << 30;
        disk_steps = image
            .pre_boot(options.profile.pre_boot, phone, disk_size)
            .map_err(|f| {
                let ran: Vec<String> = f.steps.iter().map(|s| s.to_string()).collect();
                anyhow!(
                    "the app's pre-boot steps on {}: {} (after: {})",
                    root.display(),
                    f.error,
                    ran.join("; ")
                )
            })?;
    }
    let started = Started { disk_steps };
    let mut f =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    f.write_all(started.log().as_bytes())?;
    Ok(started)
}

/// The payload asked for a mode the Android 17 app would not pick for it
/// (`ImageArchive`: docs/android-releases.md §1 row 6).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Android 17 app would run {payload} in {picked}, not {asked}: {why}")]
pub struct ModeMismatch {
    pub payload: std::path::PathBuf,
    pub picked: &'static str,
    pub asked: &'static str,
    pub why: &'static str,
}

/// Android 17's mode choice and cidata: a payload's own `cidata.iso`
/// means gRPC mode; without one the app copies its bundled cidata (the
/// harness's seed, [`crate::cidata`]) and uses AIDL; a debuggable phone's
/// `/sdcard/linux/cidata.iso` (`cidata_override`, also our seed) wins and
/// forces AIDL. The profile asked for must be the one the app picks.
pub fn android17_cidata(instance: &Instance, options: &Options) -> Result<()> {
    let asked = &options.profile;
    if !asked.name.starts_with("android17") {
        return Ok(());
    }
    let iso = instance.payload_dir.join(crate::cidata::FILE);
    let build_id = instance.payload_dir.join(crate::cidata::BUILD_ID_FILE);
    // The app decides when it installs: its own copy leaves
    // `cidata.build_id` next to `cidata.iso`; a payload's own has none.
    let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    let has_own = is_file(&iso) && !is_file(&build_id);
    let picked = avf_terminal::profile::android17_mode(has_own, options.cidata_override);
    if picked.name != asked.name {
        let why = match (has_own, options.cidata_override) {
            (true, false) => "the payload carries its own cidata.iso (set cidata_override = true for a debuggable phone's /sdcard/linux/cidata.iso)",
            (_, true) => "a debuggable phone's /sdcard/linux/cidata.iso forces the AIDL mode",
            (false, false) => "the payload carries no cidata.iso, so the app uses its bundled one",
        };
        return Err(ModeMismatch {
            payload: instance.payload_dir.clone(),
            picked: picked.name,
            asked: asked.name,
            why,
        }
        .into());
    }
    if asked.transport.is_rpc_binder() {
        // The app copies the sideloaded or its bundled cidata into the
        // image dir; a link planted there is replaced, never followed.
        let _ = std::fs::remove_file(&iso);
        crate::cidata::write(&iso)?;
        let _ = std::fs::remove_file(&build_id);
        let id = match options.cidata_override {
            // "Assume overridden cidata uses AIDL guest agent".
            true => "dev\n",
            false => crate::cidata::BUNDLED_BUILD_ID,
        };
        std::fs::write(&build_id, id).with_context(|| format!("writing {}", build_id.display()))?;
    }
    Ok(())
}

/// The upgrade gate on the installed `build_id` (the profile's rule).
pub fn gate(instance: &Instance, profile: &avf_terminal::HostProfile) -> Result<()> {
    let file = instance.payload_dir.join("build_id");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!("reading {}: {e}", file.display())),
    };
    profile.check_build_id(text.as_deref())?;
    Ok(())
}

/// What the app changes in the config it read before it asks for the VM:
/// the user's storage is shared only with the all-files-access permission
/// (`MainActivity` asks for it; refused, the share is dropped and
/// `/mnt/shared` never mounts), and `root_part_backup`, while it exists, is
/// one more writable disk after the config's own.
///
/// Newer apps give no `internal` share at all (`ConfigJson` drops any
/// sharedPath but the user's storage): the profile says which it gives.
pub fn override_config(spec: &mut VmSpec, instance: &Instance, options: &Options) {
    let shares = options.profile.shares;
    if options.deny_all_files_access || !shares.android {
        spec.shares.retain(|s| s.tag != ShareTag::Android);
    }
    if !shares.internal {
        spec.shares.retain(|s| s.tag != ShareTag::Internal);
    }
    let backup = instance.payload_dir.join(installed_image::ROOT_PART_BACKUP);
    // The payload dir lies in the guest-writable `internal` share: a link
    // planted there is not followed to a host file (QEMU would open it).
    if std::fs::symlink_metadata(&backup).is_ok_and(|m| m.is_file()) {
        spec.disks.push(Disk::Image {
            path: backup,
            writable: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(inst: &Instance) -> VmSpec {
        let text = r#"{ "name": "debian", "disks": [{ "partitions": [
            { "label": "ROOT", "path": "$PAYLOAD_DIR/root_part", "writable": true } ] }] }"#;
        VmSpec::parse(text, &inst.vm_config(), &inst.expansion()).unwrap()
    }

    fn images(s: &VmSpec) -> Vec<&Path> {
        s.disks
            .iter()
            .filter_map(|d| match d {
                Disk::Image { path, .. } => Some(path.as_path()),
                Disk::Composite { .. } => None,
            })
            .collect()
    }

    /// root_part_backup (the Upgrade screen's) becomes a second disk; one
    /// the guest planted as a link to a host file through the `internal`
    /// share does not.
    #[test]
    fn the_backup_disk_is_never_a_link() {
        let d = tempfile::tempdir().unwrap();
        let payload = d.path().join("payload");
        std::fs::create_dir_all(&payload).unwrap();
        std::fs::write(payload.join("vm_config.json"), b"{}").unwrap();
        std::fs::write(payload.join("root_part"), b"x").unwrap();
        let inst = Instance::in_place(&payload, &d.path().join("scratch")).unwrap();
        let backup = inst.payload_dir.join(installed_image::ROOT_PART_BACKUP);

        let victim = d.path().join("victim");
        std::fs::write(&victim, b"host data").unwrap();
        std::os::unix::fs::symlink(&victim, &backup).unwrap();
        let mut s = spec(&inst);
        override_config(&mut s, &inst, &Options::default());
        assert!(images(&s).is_empty(), "{:?}", s.disks);

        std::fs::remove_file(&backup).unwrap();
        std::fs::write(&backup, b"old disk").unwrap();
        let mut s = spec(&inst);
        override_config(&mut s, &inst, &Options::default());
        assert_eq!(images(&s), [backup.as_path()]);
    }

    /// Android 17: the payload's own cidata.iso means gRPC mode (asking for
    /// AIDL is refused, naming why); `cidata_override` forces AIDL, whose
    /// cidata (ours) replaces the payload's file but is no disk: the app
    /// attaches only what the config names (and the backup disk).
    #[test]
    fn android17_mode_choice_and_the_cidata_disk() {
        let d = tempfile::tempdir().unwrap();
        let payload = d.path().join("payload");
        std::fs::create_dir_all(&payload).unwrap();
        std::fs::write(payload.join("vm_config.json"), b"{}").unwrap();
        std::fs::write(payload.join("root_part"), b"x").unwrap();
        std::fs::write(payload.join("cidata.iso"), b"theirs").unwrap();
        std::fs::write(payload.join(installed_image::ROOT_PART_BACKUP), b"old").unwrap();
        let inst = Instance::in_place(&payload, &d.path().join("scratch")).unwrap();
        let aidl = Options {
            profile: avf_terminal::HostProfile::android17_aidl(),
            ..Options::default()
        };
        let e = android17_cidata(&inst, &aidl).unwrap_err();
        let m = e.downcast_ref::<ModeMismatch>().expect("typed");
        assert_eq!(m.picked, "android17-grpc");
        assert!(e.to_string().contains("cidata_override"), "{e}");
        let grpc = Options {
            profile: avf_terminal::HostProfile::android17_grpc(),
            ..Options::default()
        };
        android17_cidata(&inst, &grpc).unwrap();
        assert_eq!(
            std::fs::read(payload.join("cidata.iso")).unwrap(),
            b"theirs"
        );

        let forced = Options {
            cidata_override: true,
            ..aidl.clone()
        };
        android17_cidata(&inst, &forced).unwrap();
        assert_ne!(
            std::fs::read(payload.join("cidata.iso")).unwrap(),
            b"theirs"
        );
        let mut s = spec(&inst);
        override_config(&mut s, &inst, &forced);
        let disks: Vec<(PathBuf, bool)> = s
            .disks
            .iter()
            .filter_map(|d| match d {
                Disk::Image { path, writable } => Some((path.clone(), *writable)),
                Disk::Composite { .. } => None,
            })
            .collect();
        // The app attaches no cidata of its own (the payload's config
        // would have to name it): the backup disk comes right after root.
        assert!(matches!(s.disks[0], Disk::Composite { .. }));
        assert_eq!(
            disks,
            [(
                payload
                    .canonicalize()
                    .unwrap()
                    .join(installed_image::ROOT_PART_BACKUP),
                true
            )]
        );
        // No cidata.iso in the payload: the app's bundled one, AIDL.
        std::fs::remove_file(payload.join("cidata.iso")).unwrap();
        std::fs::remove_file(payload.join("cidata.build_id")).unwrap();
        android17_cidata(&inst, &aidl).unwrap();
        assert!(payload.join("cidata.iso").is_file());
        // The next start keeps the choice made at install.
        android17_cidata(&inst, &aidl).unwrap();
        assert!(android17_cidata(&inst, &grpc).is_err());
    }
}

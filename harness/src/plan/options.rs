//! The launch knobs a scenario or the CLI can vary ([`Options`]) and the
//! same knobs as command-line flags ([`LaunchArgs`]), both ways.

use std::ffi::OsString;

use avf_terminal::HostProfile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// U-Boot when there is no kernel (the phone's fallback).
    #[default]
    Uboot,
    /// EDK2 / AAVMF.
    Edk2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// QEMU user-mode networking (guest 10.0.2.15, host reachable at 10.0.2.2).
    #[default]
    User,
    /// TAP in a network namespace of its own, dnsmasq DHCP/DNS on a random
    /// private /24, the host as gateway (as on the phone; needs root).
    Tap,
}

/// The vCPU QEMU emulates (crosvm passes the phone's own cores through).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum VcpuModel {
    /// A phone's Arm v9 cores as crosvm hands them to the guest: SVE2 at
    /// 128 bits, no SME, pointer authentication (crosvm asks KVM for it
    /// wherever the cores have it).
    #[default]
    Phone,
    /// The same without pointer authentication: under TCG every signed
    /// return costs two helper calls (measured: 11.8 s → 8.6 s to the boot
    /// marker). For fast iteration; PAC-only faults go unseen.
    NoPauth,
}

impl VcpuModel {
    /// QEMU's `-cpu` value.
    pub fn qemu_cpu(self) -> &'static str {
        match self {
            VcpuModel::Phone => "max,pauth-impdef=on,sve-max-vq=1,sme=off",
            VcpuModel::NoPauth => "max,pauth=off,sve-max-vq=1,sme=off",
        }
    }
}

/// Knobs a scenario or the CLI can vary; the spec itself is never edited.
/// Every field is also a flag of [`LaunchArgs`], so a printed reproduction
/// line carries every knob.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    pub profile: HostProfile,
    pub firmware: Firmware,
    pub net: NetMode,
    pub vcpu: VcpuModel,
    /// Override `cpu_topology` (e.g. to keep a 2-core CI host responsive).
    pub vcpus: Option<u32>,
    /// Override the guest memory (the json's `memory_mib`, or the Android
    /// 17 app's memory setting).
    pub memory_mib: Option<u64>,
    /// The user refused the app's all-files-access request: the app drops
    /// the `/storage/emulated` share.
    pub deny_all_files_access: bool,
    /// The phone's `/data` size in GiB (default
    /// [`crate::app::DEFAULT_PHONE_STORAGE_GIB`]): the app's pre-boot disk
    /// steps compare `root_part` against a share of it.
    pub phone_storage_gib: Option<u64>,
    /// The phone is an emulator (`ro.product.vendor.device` starting with
    /// `vsoc_` or `emu64`): the app's own longer deadlines apply.
    pub emulated_device: bool,
    /// A debuggable phone's `/sdcard/linux/cidata.iso`: Android 17's app
    /// then uses it (the harness's app-shaped seed) and the AIDL mode,
    /// whatever the payload carries.
    pub cidata_override: bool,
    /// The installed image's `build_id` replaced by this text before the
    /// app's start (an older image's, e.g. one built for Android 16).
    pub installed_build_id: Option<String>,
}

/// [`Options`] as command-line flags (`avf-harness boot`), both ways.
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// The Android release (and mode) whose app and crosvm to play
    #[arg(long, default_value = "android16", value_parser = parse_profile)]
    pub profile: HostProfile,
    /// Firmware when vm_config.json has no kernel
    #[arg(long, value_enum, default_value = "uboot")]
    pub firmware: Firmware,
    #[arg(long, value_enum, default_value = "user")]
    pub net: NetMode,
    /// The emulated vCPU: the phone's cores, or the same without pointer authentication (faster under TCG)
    #[arg(long, value_enum, default_value = "phone")]
    pub vcpu: VcpuModel,
    /// Override the vCPU count (default: from cpu_topology)
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Guest memory in MiB: overrides the json's memory_mib, or is the Android 17 app's memory setting (default 1024)
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// Refuse the app's all-files-access request (no /storage/emulated share)
    #[arg(long)]
    pub deny_all_files_access: bool,
    /// The phone's /data size in GiB (the app's pre-boot disk steps)
    #[arg(long)]
    pub phone_storage_gib: Option<u64>,
    /// Play an emulated phone (Cuttlefish/Goldfish): the app's longer deadlines
    #[arg(long)]
    pub emulated_device: bool,
    /// A debuggable phone's /sdcard/linux/cidata.iso (Android 17: forces the AIDL mode)
    #[arg(long)]
    pub cidata_override: bool,
    /// Replace the installed build_id with this text (an older image's)
    #[arg(long)]
    pub installed_build_id: Option<String>,
}

fn parse_profile(s: &str) -> Result<HostProfile, String> {
    HostProfile::by_name(s).map_err(|e| e.to_string())
}

impl From<LaunchArgs> for Options {
    fn from(a: LaunchArgs) -> Options {
        Options {
            profile: a.profile,
            firmware: a.firmware,
            net: a.net,
            vcpu: a.vcpu,
            vcpus: a.vcpus,
            memory_mib: a.memory_mib,
            deny_all_files_access: a.deny_all_files_access,
            phone_storage_gib: a.phone_storage_gib,
            emulated_device: a.emulated_device,
            cidata_override: a.cidata_override,
            installed_build_id: a.installed_build_id,
        }
    }
}

impl Options {
    /// The flags that give these options back through [`LaunchArgs`].
    pub fn to_args(&self) -> Vec<OsString> {
        // Exhaustive on purpose: a new knob must be printed too.
        let Options {
            profile,
            firmware,
            net,
            vcpu,
            vcpus,
            memory_mib,
            deny_all_files_access,
            phone_storage_gib,
            emulated_device,
            cidata_override,
            installed_build_id,
        } = self;
        let mut v: Vec<OsString> = vec![
            "--profile".into(),
            profile.name.into(),
            "--firmware".into(),
            value_name(firmware).into(),
            "--net".into(),
            value_name(net).into(),
            "--vcpu".into(),
            value_name(vcpu).into(),
        ];
        if let Some(n) = vcpus {
            v.extend(["--vcpus".into(), n.to_string().into()]);
        }
        if let Some(m) = memory_mib {
            v.extend(["--memory-mib".into(), m.to_string().into()]);
        }
        if *deny_all_files_access {
            v.push("--deny-all-files-access".into());
        }
        if let Some(g) = phone_storage_gib {
            v.extend(["--phone-storage-gib".into(), g.to_string().into()]);
        }
        if *emulated_device {
            v.push("--emulated-device".into());
        }
        if *cidata_override {
            v.push("--cidata-override".into());
        }
        if let Some(b) = installed_build_id {
            v.extend(["--installed-build-id".into(), b.into()]);
        }
        v
    }
}

/// A `clap::ValueEnum` value as written on the command line.
fn value_name(v: &impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}
